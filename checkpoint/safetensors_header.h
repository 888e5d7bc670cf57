// The safetensors header: parsing and validation, with no LibTorch beyond
// c10's scalar types (so the fuzzer links without it).
//
//   ASSIGN_OR_RETURN(SafetensorsHeader h, ParseSafetensorsHeader(bytes, size));
//   for (const TensorEntry& e : h.tensors) ...
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace weft {

/// The largest header weft accepts (as the reference implementation).
constexpr uint64_t kMaxSafetensorsHeader = 100'000'000;

struct TensorEntry {
  std::string name;
  std::string dtype_name;  // as in the file, e.g. "BF16"
  at::ScalarType dtype = at::kFloat;
  std::vector<int64_t> shape;
  /// Byte offsets relative to the start of the data section.
  uint64_t begin = 0;
  uint64_t end = 0;
  uint64_t nbytes() const { return end - begin; }
};

struct SafetensorsHeader {
  uint64_t header_length = 0;
  /// Where the data section starts in the file: 8 + header_length.
  uint64_t data_offset = 0;
  std::vector<TensorEntry> tensors;  // in header order
  std::vector<std::pair<std::string, std::string>> metadata;
};

/// Validates a whole file's bytes (only the header is read; `file_size`
/// bounds the data section). Rejects everything the reference implementation
/// rejects; messages name the tensor and the value found vs expected, without
/// the file name (callers prefix it).
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(const uint8_t* bytes, uint64_t file_size);

}  // namespace weft
