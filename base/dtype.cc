#include "base/dtype.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace weft {
namespace {

const std::vector<std::pair<const char*, at::ScalarType>>& Table() {
  static const auto* table = new std::vector<std::pair<const char*, at::ScalarType>>{
      {"BOOL", at::kBool},
      {"U8", at::kByte},
      {"I8", at::kChar},
      {"I16", at::kShort},
      {"U16", at::kUInt16},
      {"I32", at::kInt},
      {"U32", at::kUInt32},
      {"I64", at::kLong},
      {"U64", at::kUInt64},
      {"F16", at::kHalf},
      {"BF16", at::kBFloat16},
      {"F32", at::kFloat},
      {"F64", at::kDouble},
      {"F8_E4M3", at::kFloat8_e4m3fn},
      {"F8_E5M2", at::kFloat8_e5m2},
      {"F8_E8M0", at::kFloat8_e8m0fnu},
      {"C64", at::kComplexFloat},
  };
  return *table;
}

// Dtypes the safetensors format defines that have no LibTorch scalar type.
bool KnownButUnsupported(absl::string_view dtype) {
  return dtype == "F4" || dtype == "F6_E2M3" || dtype == "F6_E3M2";
}

}  // namespace

const std::string& SupportedSafetensorsDtypes() {
  static const std::string* names = [] {
    auto* s = new std::string;
    for (const auto& [name, type] : Table()) absl::StrAppend(s, s->empty() ? "" : ", ", name);
    return s;
  }();
  return *names;
}

absl::StatusOr<at::ScalarType> ScalarTypeFromSafetensors(absl::string_view dtype) {
  for (const auto& [name, type] : Table()) {
    if (dtype == name) return type;
  }
  if (KnownButUnsupported(dtype)) {
    return absl::UnimplementedError(absl::StrCat("dtype ", dtype,
                                                 " has no LibTorch scalar type (expected one of ",
                                                 SupportedSafetensorsDtypes(), ")"));
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown dtype '", dtype, "' (expected one of ",
                                                 SupportedSafetensorsDtypes(), ")"));
}

absl::StatusOr<std::string> SafetensorsDtypeName(at::ScalarType type) {
  for (const auto& [name, t] : Table()) {
    if (t == type) return std::string(name);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("scalar type ", c10::toString(type), " has no safetensors dtype"));
}

const std::vector<at::ScalarType>& ModelDtypes() {
  static const auto* types =
      new std::vector<at::ScalarType>{at::kFloat, at::kBFloat16, at::kHalf, at::kDouble};
  return *types;
}

std::string TorchDtypeName(at::ScalarType type) {
  switch (type) {
    case at::kFloat:
      return "float32";
    case at::kBFloat16:
      return "bfloat16";
    case at::kHalf:
      return "float16";
    case at::kDouble:
      return "float64";
    default:
      return c10::toString(type);
  }
}

absl::StatusOr<at::ScalarType> ScalarTypeFromTorchName(absl::string_view name,
                                                       const std::vector<at::ScalarType>& allowed) {
  static const auto* aliases = new std::vector<std::pair<const char*, at::ScalarType>>{
      {"float32", at::kFloat}, {"float", at::kFloat}, {"bfloat16", at::kBFloat16},
      {"float16", at::kHalf},  {"half", at::kHalf},   {"float64", at::kDouble},
      {"double", at::kDouble}, {"fp32", at::kFloat},  {"bf16", at::kBFloat16},
      {"fp16", at::kHalf},     {"fp64", at::kDouble},
  };
  for (const auto& [alias, type] : *aliases) {
    if (name == alias && std::find(allowed.begin(), allowed.end(), type) != allowed.end()) {
      return type;
    }
  }
  std::string expected;
  for (size_t i = 0; i < allowed.size(); ++i) {
    absl::StrAppend(&expected, i == 0 ? "" : (i + 1 == allowed.size() ? " or " : ", "),
                    TorchDtypeName(allowed[i]));
  }
  return absl::InvalidArgumentError(
      absl::StrCat(name, " is not supported (expected ", expected, ")"));
}

}  // namespace weft
