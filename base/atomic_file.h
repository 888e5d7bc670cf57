// AtomicFile: write a file so that a crash never leaves a torn file under
// its final name. Bytes go to `<path>.tmp.<pid>` in the same directory;
// Commit() fsyncs it, renames it over `path` and fsyncs the directory. A file
// destroyed without Commit() removes its temporary.
//
//   ASSIGN_OR_RETURN(AtomicFile out, AtomicFile::Create(path));
//   RETURN_IF_ERROR(out.Write(header.data(), header.size()));
//   RETURN_IF_ERROR(out.Commit());
#pragma once

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "base/syscall.h"

namespace weft {

class AtomicFile {
 public:
  static absl::StatusOr<AtomicFile> Create(const std::string& path);
  AtomicFile(AtomicFile&& other) noexcept;
  AtomicFile& operator=(AtomicFile&&) = delete;
  AtomicFile(const AtomicFile&) = delete;
  ~AtomicFile();

  /// Appends `size` bytes; errors name the call, the file and errno.
  absl::Status Write(const void* data, size_t size);
  /// fsync, rename to the final path, fsync of the directory.
  absl::Status Commit();

 private:
  AtomicFile(std::string path, std::string tmp, UniqueFd fd);

  std::string path_;
  std::string tmp_;
  UniqueFd fd_;
};

}  // namespace weft
