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

/// One pp_plan entry in transformers' format: a module (a direct child of
/// the model, or a module list whose children are the decoder layers) and
/// the names of what it takes and gives, e.g.
/// `model.layers: [[hidden_states, attention_mask], [hidden_states]]`.
struct PpPlanEntry {
  std::string module;  // as written; `embed_tokens` means `model.embed_tokens`
  std::vector<std::string> inputs, outputs;
};

/// What transformers' pp_plan leaves out: how the units are cut into stages
/// (`pp_split:` next to `pp_plan:`). At most one of layers_per_stage,
/// split_points and stages is given; none: an even split in which the
/// embedding counts as `first_stage_less_layers` layers and the final norm
/// with the head as `last_stage_less_layers` (torchtitan's weights).
struct PpSplit {
  int first_stage_less_layers = 1;
  int last_stage_less_layers = 1;
  std::vector<int64_t> layers_per_stage;         // decoder layers per stage
  std::vector<std::string> split_points;         // the first module of stages 1..S-1
  std::vector<std::vector<std::string>> stages;  // every stage's modules, in order
  int stages_per_rank = 0;                       // 0: the schedule's default
  std::string stage_to_rank;                     // "loop" or "v"; "": the schedule's
};

struct Plan {
  std::vector<PlanEntry> tp;    // in file order
  std::vector<PpPlanEntry> pp;  // in forward order; empty: no pp_plan
  PpSplit pp_split;
};

/// Parses a plan document (YAML, or JSON, which YAML reads too) with a
/// `tp_plan` mapping, a `pp_plan` mapping (and its `pp_split`), or both.
/// `source` names it in errors.
absl::StatusOr<Plan> ParsePlan(absl::string_view text, const std::string& source);
absl::StatusOr<Plan> LoadPlanFile(const std::string& path);

/// transformers' `auto`: config.json's `base_model_tp_plan` (keys relative to
/// the base model, so prefixed with `model.`) plus the causal-LM head's plan
/// (`lm_head`: colwise_gather_output). NotFound when config.json has none.
absl::StatusOr<Plan> PlanFromConfigJson(absl::string_view config_json);

/// The pipeline half of `auto`: config.json's `base_model_pp_plan` (keys
/// relative to the base model) plus the head's `lm_head: [[hidden_states],
/// [logits]]`. NotFound when config.json has none.
absl::StatusOr<Plan> PpPlanFromConfigJson(absl::string_view config_json);

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
