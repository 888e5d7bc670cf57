// The plans in plans/*.yaml, compiled into the binary, by model_type
// ("llama", "mistral", "qwen2", "qwen3", "phi3", "mixtral").
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "plans/plan.h"

namespace weft {

/// (name, YAML text) of every shipped plan (generated from plans/*.yaml).
const std::vector<std::pair<std::string, std::string>>& ShippedPlans();

/// `--tp-plan` semantics: a file path, or "auto": config.json's
/// base_model_tp_plan (+ the head), else the shipped plan for its model_type.
absl::StatusOr<Plan> ResolvePlanArgument(const std::string& argument, const std::string& model_dir);

/// The plan weft ships for config.json's model_type (with a pp_plan when
/// `pipeline`); NotFound: "weft ships no plan for model_type 'x' (shipped: ...)".
absl::StatusOr<Plan> ShippedPlanFor(const std::string& config_json, bool pipeline);

/// The same for a config.json given as text (`auto` reads it, not a file).
absl::StatusOr<Plan> ResolvePlanForConfig(const std::string& argument,
                                          const std::string& config_json);

}  // namespace weft
