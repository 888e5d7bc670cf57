#include "plans/shipped_plans.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status.h"
#include "base/text_file.h"
#include "models/config.h"
#include "plans/shipped_plans.h"

namespace weft {

absl::StatusOr<Plan> ResolvePlanArgument(const std::string& argument,
                                         const std::string& model_dir) {
  if (argument != "auto") return LoadPlanFile(argument);
  auto text = ReadTextFile(model_dir + "/config.json");
  if (!text.ok()) {
    // The same error LoadModelConfig gives for a missing config.json.
    ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(model_dir));
    (void)config;
  }
  return ResolvePlanForConfig(argument, *text);
}

absl::StatusOr<Plan> ResolvePlanForConfig(const std::string& argument,
                                          const std::string& config_json) {
  if (argument != "auto") return LoadPlanFile(argument);
  auto from_config = PlanFromConfigJson(config_json);
  if (from_config.ok() || from_config.status().code() != absl::StatusCode::kNotFound) {
    return from_config;
  }
  auto shipped = ShippedPlanFor(config_json, /*pipeline=*/false);
  if (absl::IsNotFound(shipped.status())) {
    return absl::NotFoundError(absl::StrCat(
        "--tp-plan auto: config.json has no base_model_tp_plan and ", shipped.status().message()));
  }
  return shipped;
}

absl::StatusOr<Plan> ShippedPlanFor(const std::string& config_json, bool pipeline) {
  ASSIGN_OR_RETURN(ModelConfig config, ParseModelConfig(config_json));
  std::vector<std::string> names;
  for (const auto& [name, yaml] : ShippedPlans()) {
    if (name == config.model_type) {
      ASSIGN_OR_RETURN(Plan plan, ParsePlan(yaml, absl::StrCat("plans/", name, ".yaml")));
      if (!pipeline || !plan.pp.empty()) return plan;
    }
    names.push_back(name);
  }
  return absl::NotFoundError(absl::StrCat("weft ships no ", pipeline ? "pp_plan" : "plan",
                                          " for model_type '", config.model_type,
                                          "' (shipped: ", absl::StrJoin(names, ", "), ")"));
}

}  // namespace weft
