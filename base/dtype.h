// -----------------------------------------------------------------------------
// File: base/dtype.h
// -----------------------------------------------------------------------------
//
// Dtype names <-> LibTorch scalar types: safetensors' strings ("BF16") and
// torch's names as config.json's torch_dtype and weft's flags spell them
// ("bfloat16"). The one place weft parses a dtype.
//
//   ASSIGN_OR_RETURN(at::ScalarType t, ScalarTypeFromSafetensors("BF16"));
//   SafetensorsDtypeName(at::kBFloat16) == "BF16";
//   ASSIGN_OR_RETURN(at::ScalarType c, ScalarTypeFromTorchName("bfloat16", {at::kFloat,
//   at::kBFloat16}));
#pragma once

#include <c10/core/ScalarType.h>

#include <cstddef>
#include <string>
#include <vector>

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

/// The floating-point types a model computes in: float32, bfloat16,
/// float16, float64.
const std::vector<at::ScalarType>& ModelDtypes();

/// The scalar type for a torch dtype name ("float32", "float" or "fp32";
/// "bfloat16" or "bf16"; "float16", "half" or "fp16"; "float64", "double" or
/// "fp64"), if it is one of `allowed`.
/// Error: `int8 is not supported (expected float32 or bfloat16)`; callers
/// prefix what they parsed (`--dtype `).
absl::StatusOr<at::ScalarType> ScalarTypeFromTorchName(
    absl::string_view name, const std::vector<at::ScalarType>& allowed = ModelDtypes());

/// torch's name for a scalar type ("bfloat16").
std::string TorchDtypeName(at::ScalarType type);

}  // namespace weft
