// Tensor-parallel plans: YAML (or JSON) files mapping glob patterns over a
// model's Hugging Face names to transformers' sharding style strings.
//
//   tp_plan:
//     "model.layers.*.self_attn.q_proj": colwise
//     "model.layers.*.self_attn.o_proj": rowwise
//     "lm_head": colwise_gather_output
//
// Pattern semantics:
//   - `*` matches exactly one dot-separated segment (`model.layers.*.mlp`
//     matches `model.layers.3.mlp`, not `model.layers.3.x.mlp`);
//   - a key names a module (covering its weight and bias) or one parameter;
//   - for each parameter, a parameter key beats a module key, and among keys
//     of the same kind an exact key (no `*`) beats a wildcard key;
//   - two keys of the same rank giving one parameter different styles is an
//     error, and so (by default) is a key that matches nothing.
//
//   ASSIGN_OR_RETURN(Plan plan, LoadPlanFile("plans/llama.yaml"));
//   ASSIGN_OR_RETURN(auto styles, ResolvePlan(plan, parameter_names));
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "plans/styles.h"

namespace weft {

struct PlanEntry {
  std::string pattern;
  Style style;
};

struct Plan {
  std::vector<PlanEntry> tp;  // in file order
};

/// Parses a plan document (YAML, or JSON, which YAML reads too) with a
/// `tp_plan` mapping. `source` names it in errors.
absl::StatusOr<Plan> ParsePlan(absl::string_view text, const std::string& source);
absl::StatusOr<Plan> LoadPlanFile(const std::string& path);

/// transformers' `auto`: config.json's `base_model_tp_plan` (keys relative to
/// the base model, so prefixed with `model.`) plus the causal-LM head's plan
/// (`lm_head`: colwise_gather_output). NotFound when config.json has none.
absl::StatusOr<Plan> PlanFromConfigJson(absl::string_view config_json);

/// True when `pattern` matches `name` (`*` = one dot-separated segment).
bool MatchPattern(absl::string_view pattern, absl::string_view name);

struct ResolvedStyle {
  Style style;
  std::string key;  // the plan key that decided it
};

struct ResolveOptions {
  /// Keys that match no module or parameter are errors unless this is set.
  bool allow_unmatched = false;
};

/// The style of every parameter the plan covers, by parameter name
/// (`model.layers.0.self_attn.q_proj.weight`). Parameters the plan does not
/// cover are absent (replicated).
absl::StatusOr<std::map<std::string, ResolvedStyle>> ResolvePlan(
    const Plan& plan, const std::vector<std::string>& parameter_names,
    const ResolveOptions& options = {});

}  // namespace weft
