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
#include "base/mapped_file.h"
#include "checkpoint/safetensors_header.h"

namespace weft {

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

/// A tensor a streaming writer will receive: its name, dtype and shape.
struct TensorDecl {
  std::string name;
  at::ScalarType dtype = at::kFloat;
  std::vector<int64_t> shape;
  uint64_t nbytes() const;
};

/// Writes a safetensors file one tensor at a time, so the caller holds one
/// tensor, not the file's: the header is written from the declarations,
/// then Append takes the tensors in declaration order (data in that order;
/// give tensors of one element size, or the larger first, to keep them
/// aligned). Atomic like WriteSafetensors.
///
///   ASSIGN_OR_RETURN(auto w, SafetensorsStreamWriter::Create(path, decls));
///   for (...) RETURN_IF_ERROR(w->Append(name, tensor));
///   RETURN_IF_ERROR(w->Commit());
class SafetensorsStreamWriter {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsStreamWriter>> Create(
      const std::string& path, std::vector<TensorDecl> tensors,
      const std::vector<std::pair<std::string, std::string>>& metadata = {{"format", "pt"}});
  ~SafetensorsStreamWriter();
  /// The next declared tensor; name, dtype and shape must match.
  absl::Status Append(const std::string& name, const at::Tensor& tensor);
  /// After every declared tensor was appended.
  absl::Status Commit();

 private:
  struct Impl;
  explicit SafetensorsStreamWriter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace weft
