#include "plans/plan.h"

#include <yaml-cpp/yaml.h>

#include <fstream>
#include <set>
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

absl::StatusOr<std::vector<std::string>> StringList(const YAML::Node& node,
                                                    const std::string& what) {
  if (!node.IsSequence()) {
    return absl::InvalidArgumentError(absl::StrCat(what, " is not a list"));
  }
  std::vector<std::string> out;
  for (const auto& item : node) {
    if (!item.IsScalar())
      return absl::InvalidArgumentError(absl::StrCat(what, " holds a non-name"));
    out.push_back(item.as<std::string>());
  }
  return out;
}

// transformers' format: module: [[input names], [output names]].
absl::StatusOr<std::vector<PpPlanEntry>> ParsePpPlanNode(const YAML::Node& node,
                                                         const std::string& source) {
  if (!node.IsMap() || node.size() == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": pp_plan is not a mapping (expected module: [[inputs], [outputs]], in order)"));
  }
  std::vector<PpPlanEntry> out;
  std::set<std::string> seen;
  for (const auto& item : node) {
    PpPlanEntry e;
    e.module = item.first.as<std::string>();
    const std::string what = absl::StrCat(source, ": pp_plan key '", e.module, "'");
    if (!item.second.IsSequence() || item.second.size() != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " is not [[inputs], [outputs]] (transformers' pp_plan format)"));
    }
    ASSIGN_OR_RETURN(e.inputs, StringList(item.second[0], what + ": inputs"));
    ASSIGN_OR_RETURN(e.outputs, StringList(item.second[1], what + ": outputs"));
    if (!seen.insert(e.module).second) {
      return absl::InvalidArgumentError(absl::StrCat(what, " appears twice"));
    }
    out.push_back(std::move(e));
  }
  return out;
}

absl::StatusOr<PpSplit> ParsePpSplitNode(const YAML::Node& node, const std::string& source) {
  if (!node.IsMap()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": pp_split is not a mapping"));
  }
  PpSplit split;
  int ways = 0;
  for (const auto& item : node) {
    const std::string key = item.first.as<std::string>();
    const std::string what = absl::StrCat(source, ": pp_split.", key);
    try {
      if (key == "first_stage_less_layers" || key == "last_stage_less_layers" ||
          key == "stages_per_rank") {
        const int v = item.second.as<int>();
        if (v < 0 || (key == "stages_per_rank" && v < 1)) {
          return absl::InvalidArgumentError(absl::StrCat(
              what, " is ", v, " (expected >= ", key == "stages_per_rank" ? 1 : 0, ")"));
        }
        (key == "first_stage_less_layers"  ? split.first_stage_less_layers
         : key == "last_stage_less_layers" ? split.last_stage_less_layers
                                           : split.stages_per_rank) = v;
      } else if (key == "layers_per_stage") {
        ++ways;
        split.layers_per_stage = item.second.as<std::vector<int64_t>>();
        for (int64_t n : split.layers_per_stage) {
          if (n < 0) {
            return absl::InvalidArgumentError(absl::StrCat(what, " holds ", n, " (expected >= 0)"));
          }
        }
      } else if (key == "split_points") {
        ++ways;
        ASSIGN_OR_RETURN(split.split_points, StringList(item.second, what));
      } else if (key == "stages") {
        ++ways;
        if (!item.second.IsSequence()) {
          return absl::InvalidArgumentError(absl::StrCat(what, " is not a list of module lists"));
        }
        for (const auto& stage : item.second) {
          ASSIGN_OR_RETURN(std::vector<std::string> modules, StringList(stage, what + " entry"));
          split.stages.push_back(std::move(modules));
        }
      } else if (key == "stage_to_rank") {
        split.stage_to_rank = item.second.as<std::string>();
        if (split.stage_to_rank != "loop" && split.stage_to_rank != "v") {
          return absl::InvalidArgumentError(
              absl::StrCat(what, " is '", split.stage_to_rank, "' (expected loop or v)"));
        }
      } else {
        return absl::InvalidArgumentError(absl::StrCat(
            source, ": unknown pp_split key '", key,
            "' (expected first_stage_less_layers, last_stage_less_layers, layers_per_stage, "
            "split_points, stages, stages_per_rank or stage_to_rank)"));
      }
    } catch (const YAML::Exception&) {
      return absl::InvalidArgumentError(absl::StrCat(what, " has the wrong type"));
    }
  }
  if (ways > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(source,
                     ": pp_split gives more than one of layers_per_stage, split_points and "
                     "stages (expected at most one way to cut the model)"));
  }
  return split;
}

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
  if (!root.IsMap() || (!root["tp_plan"] && !root["pp_plan"])) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": no tp_plan mapping (expected tp_plan: {pattern: style})"));
  }
  for (const auto& item : root) {
    const std::string top = item.first.as<std::string>();
    if (top != "tp_plan" && top != "pp_plan" && top != "pp_split") {
      return absl::InvalidArgumentError(absl::StrCat(source, ": unknown top-level key '", top,
                                                     "' (expected tp_plan, pp_plan or pp_split)"));
    }
  }
  Plan plan;
  if (root["pp_plan"]) {
    ASSIGN_OR_RETURN(plan.pp, ParsePpPlanNode(root["pp_plan"], source));
    if (root["pp_split"]) {
      ASSIGN_OR_RETURN(plan.pp_split, ParsePpSplitNode(root["pp_split"], source));
    }
  } else if (root["pp_split"]) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": pp_split without a pp_plan (expected both, or pp_plan alone)"));
  }
  if (!root["tp_plan"]) return plan;
  YAML::Node tp = root["tp_plan"];
  if (!tp.IsMap()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": tp_plan is not a mapping (expected pattern: style)"));
  }
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

absl::StatusOr<Plan> PpPlanFromConfigJson(absl::string_view config_json) {
  ASSIGN_OR_RETURN(JsonValue json, ParseJson(config_json));
  const JsonValue* base = json.is_object() ? json.Find("base_model_pp_plan") : nullptr;
  if (base == nullptr || !base->is_object() || base->members.empty()) {
    return absl::NotFoundError("config.json has no base_model_pp_plan");
  }
  Plan plan;
  for (const auto& [key, value] : base->members) {
    PpPlanEntry e;
    e.module = "model." + key;
    if (!value.is_array() || value.items.size() != 2) {
      return absl::InvalidArgumentError(absl::StrCat("config.json: base_model_pp_plan key '", key,
                                                     "' is not [[inputs], [outputs]]"));
    }
    for (int side = 0; side < 2; ++side) {
      for (const JsonValue& name : value.items[side].items) {
        (side == 0 ? e.inputs : e.outputs).push_back(name.text);
      }
    }
    plan.pp.push_back(std::move(e));
  }
  plan.pp.push_back({"lm_head", {"hidden_states"}, {"logits"}});  // the head's _pp_plan
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
