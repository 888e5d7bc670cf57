// MappedFile: a whole file mapped read-only (copy-on-write), RAII.
//
// The mapping lives as long as any shared_ptr to it: tensors that view the
// file hold one. Every system call is checked; errors name the call, the
// path, errno and the source line, e.g.
// `open(/x/model.safetensors): No such file or directory (errno 2) [base/mapped_file.cc:31]`.
//
//   ASSIGN_OR_RETURN(std::shared_ptr<MappedFile> f, MappedFile::Open(path));
//   const uint8_t* bytes = f->data();
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "base/syscall.h"

namespace weft {

class MappedFile {
 public:
  static absl::StatusOr<std::shared_ptr<MappedFile>> Open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::string& path() const { return path_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  /// The open descriptor (for pread), valid while this object lives.
  int fd() const { return fd_.get(); }

  /// Drops this process's pages of [offset, offset + length) (they stay in
  /// the page cache and are read again on the next touch). Bounds the RSS of
  /// a streaming reader to what it has not finished with.
  void Release(size_t offset, size_t length) const;

 private:
  MappedFile(std::string path, UniqueFd fd, uint8_t* data, size_t size);

  std::string path_;
  UniqueFd fd_;
  uint8_t* data_;
  size_t size_;
};

}  // namespace weft
