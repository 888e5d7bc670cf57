// safetensors files: header validation, zero-copy reading, atomic writing.
//
// The format: an 8-byte little-endian header length N, N bytes of JSON
// ({"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets"}}),
// then the data section, which the tensors' [begin, end) offsets must cover
// exactly, without holes or overlaps.
//
//   ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open("model.safetensors"));
//   at::Tensor w = file->Get("lm_head.weight");   // a view into the mapping
//
//   RETURN_IF_ERROR(WriteSafetensors("out.safetensors", {{"w", w}}, {{"format", "pt"}}));
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "checkpoint/mapped_file.h"

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

class SafetensorsFile {
 public:
  /// Maps and validates `path`. Errors start with the path.
  static absl::StatusOr<std::shared_ptr<SafetensorsFile>> Open(const std::string& path);

  const std::string& path() const { return mapping_->path(); }
  const SafetensorsHeader& header() const { return header_; }
  const std::vector<TensorEntry>& tensors() const { return header_.tensors; }
  const std::shared_ptr<MappedFile>& mapping() const { return mapping_; }
  /// nullptr when absent.
  const TensorEntry* Find(const std::string& name) const;
  /// Pointer to a tensor's first byte in the mapping.
  const uint8_t* Data(const TensorEntry& entry) const {
    return mapping_->data() + header_.data_offset + entry.begin;
  }
  /// A CPU tensor viewing the mapping (zero-copy; it keeps the mapping alive).
  /// When the bytes are not aligned to the element size, an aligned copy.
  /// Throws if `name` is absent.
  at::Tensor Get(const std::string& name) const;
  at::Tensor Get(const TensorEntry& entry) const;

 private:
  SafetensorsFile(std::shared_ptr<MappedFile> mapping, SafetensorsHeader header);

  std::shared_ptr<MappedFile> mapping_;
  SafetensorsHeader header_;
  std::map<std::string, size_t> index_;
};

/// Writes tensors (CPU or not; any strides) to `path` atomically: a
/// temporary file in the same directory, fsync, rename, fsync of the
/// directory. The header is padded with spaces to a multiple of 8 and the
/// tensors are laid out by descending element size, then name, so every
/// tensor starts aligned to its element size.
absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                              const std::vector<std::pair<std::string, std::string>>& metadata = {
                                  {"format", "pt"}});

}  // namespace weft
