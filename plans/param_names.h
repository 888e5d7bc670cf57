// Hugging Face parameter and module names as the plan engine reads them:
// "model.layers.0.self_attn.q_proj.weight" is parameter `weight` of module
// "model.layers.0.self_attn.q_proj". Internal to plans/.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace weft {
namespace plans_internal {

/// "a.b.weight" -> "a.b" ("" for a top-level name).
inline std::string ModuleOf(const std::string& param) {
  size_t dot = param.rfind('.');
  return dot == std::string::npos ? "" : param.substr(0, dot);
}
/// "a.b.weight" -> "weight".
inline std::string LocalName(const std::string& param) {
  return param.substr(param.rfind('.') + 1);
}
/// True when `name` lies inside module `module`.
inline bool Under(const std::string& name, const std::string& module) {
  return absl::StartsWith(name, module + ".");
}
inline bool IsNumber(absl::string_view s) {
  return !s.empty() &&
         std::all_of(s.begin(), s.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
}
/// Modules whose rows or columns are attention heads: their shards must hold
/// whole heads, so these dims must divide by tp.
inline bool HasHeads(const std::string& module) {
  for (const char* suffix : {"q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj"}) {
    if (absl::EndsWith(module, suffix)) return true;
  }
  return false;
}
/// Expert parallelism: "...experts.<e>..." -> the experts list and e.
inline bool ExpertOf(const std::string& name, std::string* list, int64_t* expert) {
  std::vector<std::string> parts = absl::StrSplit(name, '.');
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    if (parts[i] == "experts" && IsNumber(parts[i + 1])) {
      *list = absl::StrJoin(parts.begin(), parts.begin() + i + 1, ".");
      *expert = static_cast<int64_t>(std::stoll(parts[i + 1]));
      return true;
    }
  }
  return false;
}

}  // namespace plans_internal
}  // namespace weft
