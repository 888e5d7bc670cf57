// -----------------------------------------------------------------------------
// File: base/syscall.h
// -----------------------------------------------------------------------------
//
// Checked system calls: one error format and one owner of file descriptors.
//
// A failed call becomes one line naming the call, its object, errno's text
// and number, and the source line that made it (llm.c's `fopenCheck`):
//
//   open(/x/model.safetensors): No such file or directory (errno 2) [base/mapped_file.cc:31]
//
// `UniqueFd` closes its descriptor when it goes out of scope (llama.cpp's
// `llama_file`), so an early return never leaks one.
//
//   UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
//   if (!fd.ok()) return WEFT_SYSCALL_ERROR("open", path);
//   if (::fstat(fd.get(), &st) != 0) return WEFT_SYSCALL_ERROR("fstat", path);
#pragma once

#include <cerrno>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace weft {

/// `call(what): strerror(err) (errno err) [file:line]` as an Unavailable
/// status. Use through WEFT_SYSCALL_ERROR, which passes errno and the line.
absl::Status SyscallError(absl::string_view call, absl::string_view what, int err, const char* file,
                          int line);

/// The status for the system call that just failed (reads errno now).
#define WEFT_SYSCALL_ERROR(call, what) ::weft::SyscallError(call, what, errno, __FILE__, __LINE__)

/// Owns a file descriptor (or socket) and closes it on destruction.
/// Move-only; `release()` hands the descriptor over to another owner.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  /// True when a descriptor is held (>= 0).
  bool ok() const { return fd_ >= 0; }
  int get() const { return fd_; }
  /// Gives up ownership: the caller closes the returned descriptor.
  int release() { return std::exchange(fd_, -1); }
  /// Closes the held descriptor (if any) and holds `fd` instead.
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

}  // namespace weft
