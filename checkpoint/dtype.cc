#include "checkpoint/dtype.h"

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

}  // namespace weft
