#include "base/syscall.h"

#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"

namespace weft {

absl::Status SyscallError(absl::string_view call, absl::string_view what, int err, const char* file,
                          int line) {
  return absl::UnavailableError(absl::StrCat(call, "(", what, "): ", std::strerror(err), " (errno ",
                                             err, ") [", file, ":", line, "]"));
}

void UniqueFd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

}  // namespace weft
