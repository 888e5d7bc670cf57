// safetensors dtype strings <-> LibTorch scalar types.
//
//   ASSIGN_OR_RETURN(at::ScalarType t, ScalarTypeFromSafetensors("BF16"));
//   SafetensorsDtypeName(at::kBFloat16) == "BF16";
#pragma once

#include <c10/core/ScalarType.h>

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace weft {

/// The scalar type for a safetensors dtype. Errors distinguish an unknown
/// string from a dtype of the format that this LibTorch cannot hold (F4, F6_*).
absl::StatusOr<at::ScalarType> ScalarTypeFromSafetensors(absl::string_view dtype);

/// The safetensors string for a scalar type; error for types the format lacks.
absl::StatusOr<std::string> SafetensorsDtypeName(at::ScalarType type);

/// Every dtype string weft reads, comma-separated (for error messages).
const std::string& SupportedSafetensorsDtypes();

}  // namespace weft
