#include "plans/plan.h"

#include <yaml-cpp/yaml.h>

#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "base/json.h"
#include "base/status.h"
#include "base/text_file.h"

namespace weft {
namespace {

std::vector<std::string> Segments(absl::string_view s) { return absl::StrSplit(s, '.'); }

bool HasWildcard(absl::string_view pattern) { return pattern.find('*') != absl::string_view::npos; }

}  // namespace

bool MatchPattern(absl::string_view pattern, absl::string_view name) {
  std::vector<std::string> p = Segments(pattern), n = Segments(name);
  if (p.size() != n.size()) return false;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] != "*" && p[i] != n[i]) return false;
  }
  return true;
}

absl::StatusOr<Plan> ParsePlan(absl::string_view text, const std::string& source) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(text));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ":", e.mark.line + 1, ":", e.mark.column + 1, ": ", e.msg));
  }
  if (!root.IsMap() || !root["tp_plan"]) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": no tp_plan mapping (expected tp_plan: {pattern: style})"));
  }
  for (const auto& item : root) {
    const std::string top = item.first.as<std::string>();
    if (top != "tp_plan") {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": unknown top-level key '", top, "' (expected tp_plan)"));
    }
  }
  YAML::Node tp = root["tp_plan"];
  if (!tp.IsMap()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": tp_plan is not a mapping (expected pattern: style)"));
  }
  Plan plan;
  std::map<std::string, std::string> seen;
  for (const auto& item : tp) {
    std::string key = item.first.as<std::string>();
    if (!item.second.IsScalar()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": tp_plan key '", key, "' has no style string"));
    }
    for (const std::string& segment : Segments(key)) {
      if (segment.empty() || (segment != "*" && segment.find('*') != std::string::npos)) {
        return absl::InvalidArgumentError(
            absl::StrCat(source, ": tp_plan key '", key, "': segment '", segment,
                         "' is not a pattern (expected a name or '*', one dot-separated segment)"));
      }
    }
    std::string value = item.second.as<std::string>();
    auto style = ParseStyle(value);
    if (!style.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": tp_plan key '", key, "': ", style.status().message()));
    }
    if (!seen.emplace(key, value).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": tp_plan key '", key, "' appears twice"));
    }
    plan.tp.push_back({key, *style});
  }
  return plan;
}

absl::StatusOr<Plan> LoadPlanFile(const std::string& path) {
  auto text = ReadTextFile(path);
  if (absl::IsInvalidArgument(text.status())) return text.status();  // a directory, a FIFO
  if (!text.ok()) return absl::NotFoundError(absl::StrCat(path, ": cannot read the plan file"));
  return ParsePlan(*text, path);
}

absl::StatusOr<Plan> PlanFromConfigJson(absl::string_view config_json) {
  ASSIGN_OR_RETURN(JsonValue json, ParseJson(config_json));
  const JsonValue* base = json.is_object() ? json.Find("base_model_tp_plan") : nullptr;
  if (base == nullptr || !base->is_object() || base->members.empty()) {
    return absl::NotFoundError("config.json has no base_model_tp_plan");
  }
  Plan plan;
  for (const auto& [key, value] : base->members) {
    if (!value.is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat("config.json: base_model_tp_plan key '", key, "' has no style string"));
    }
    auto style = ParseStyle(value.text);
    if (!style.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("config.json: base_model_tp_plan key '", key,
                                                     "': ", style.status().message()));
    }
    plan.tp.push_back({"model." + key, *style});
  }
  plan.tp.push_back({"lm_head", Style::kColwiseGatherOutput});  // the head's _tp_plan
  return plan;
}

absl::StatusOr<std::map<std::string, ResolvedStyle>> ResolvePlan(
    const Plan& plan, const std::vector<std::string>& parameter_names,
    const ResolveOptions& options) {
  // Rank of a match: 0 exact parameter key, 1 wildcard parameter key,
  // 2 exact module key, 3 wildcard module key. Lower wins.
  struct Best {
    int rank = 4;
    const PlanEntry* entry = nullptr;
  };
  std::map<std::string, Best> best;
  std::vector<bool> used(plan.tp.size(), false);
  for (const std::string& param : parameter_names) {
    size_t dot = param.rfind('.');
    std::string module = dot == std::string::npos ? "" : param.substr(0, dot);
    for (size_t i = 0; i < plan.tp.size(); ++i) {
      const PlanEntry& e = plan.tp[i];
      int rank;
      if (MatchPattern(e.pattern, param)) {
        rank = HasWildcard(e.pattern) ? 1 : 0;
      } else if (!module.empty() && MatchPattern(e.pattern, module)) {
        rank = HasWildcard(e.pattern) ? 3 : 2;
      } else {
        continue;
      }
      used[i] = true;
      Best& b = best[param];
      if (rank < b.rank) {
        b = {rank, &e};
      } else if (rank == b.rank && b.entry->style != e.style) {
        return absl::InvalidArgumentError(absl::StrCat(
            "plan keys '", b.entry->pattern, "' (", StyleName(b.entry->style), ") and '", e.pattern,
            "' (", StyleName(e.style), ") give parameter ", param, " two styles (expected one)"));
      }
    }
  }
  if (!options.allow_unmatched) {
    for (size_t i = 0; i < plan.tp.size(); ++i) {
      if (!used[i]) {
        return absl::InvalidArgumentError(
            absl::StrCat("plan key '", plan.tp[i].pattern, "' (", StyleName(plan.tp[i].style),
                         ") matches no module or parameter of the model"));
      }
    }
  }
  std::map<std::string, ResolvedStyle> out;
  for (const auto& [param, b] : best) out[param] = {b.entry->style, b.entry->pattern};
  return out;
}

}  // namespace weft
