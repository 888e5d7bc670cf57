#include "base/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/syscall.h"

namespace weft {
namespace {

std::string Dirname(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace

absl::StatusOr<AtomicFile> AtomicFile::Create(const std::string& path) {
  std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd.ok()) return WEFT_SYSCALL_ERROR("open", tmp);
  return AtomicFile(path, std::move(tmp), std::move(fd));
}

AtomicFile::AtomicFile(std::string path, std::string tmp, UniqueFd fd)
    : path_(std::move(path)), tmp_(std::move(tmp)), fd_(std::move(fd)) {}

AtomicFile::AtomicFile(AtomicFile&& other) noexcept
    : path_(std::move(other.path_)), tmp_(std::move(other.tmp_)), fd_(std::move(other.fd_)) {
  other.tmp_.clear();
}

AtomicFile::~AtomicFile() {
  fd_.reset();
  if (!tmp_.empty()) ::unlink(tmp_.c_str());
}

absl::Status AtomicFile::Write(const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd_.get(), p, std::min<size_t>(size, 1 << 30));
    if (n < 0) {
      if (errno == EINTR) continue;
      return WEFT_SYSCALL_ERROR("write", tmp_);
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status AtomicFile::Commit() {
  if (::fsync(fd_.get()) != 0) return WEFT_SYSCALL_ERROR("fsync", tmp_);
  if (::close(fd_.release()) != 0) return WEFT_SYSCALL_ERROR("close", tmp_);
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) return WEFT_SYSCALL_ERROR("rename", tmp_);
  tmp_.clear();
  UniqueFd dir(::open(Dirname(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir.ok()) ::fsync(dir.get());
  return absl::OkStatus();
}

}  // namespace weft
