#include "checkpoint/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace weft {
namespace {

#define WEFT_SYSCALL_ERROR(call, path) SyscallError(call, path, errno, __FILE__, __LINE__)

absl::Status SyscallError(const char* call, const std::string& path, int err, const char* file,
                          int line) {
  return absl::UnavailableError(absl::StrCat(call, "(", path, "): ", std::strerror(err), " (errno ",
                                             err, ") [", file, ":", line, "]"));
}

size_t PageSize() {
  static const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  return page;
}

}  // namespace

absl::StatusOr<std::shared_ptr<MappedFile>> MappedFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return WEFT_SYSCALL_ERROR("open", path);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    absl::Status status = WEFT_SYSCALL_ERROR("fstat", path);
    ::close(fd);
    return status;
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  size_t size = static_cast<size_t>(st.st_size);
  uint8_t* data = nullptr;
  if (size > 0) {
    // Private and writable: a tensor that views the file may be modified in
    // place without touching the file (copy-on-write).
    void* addr = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (addr == MAP_FAILED) {
      absl::Status status = WEFT_SYSCALL_ERROR("mmap", path);
      ::close(fd);
      return status;
    }
    data = static_cast<uint8_t*>(addr);
  }
  return std::shared_ptr<MappedFile>(new MappedFile(path, fd, data, size));
}

MappedFile::MappedFile(std::string path, int fd, uint8_t* data, size_t size)
    : path_(std::move(path)), fd_(fd), data_(data), size_(size) {}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(data_, size_);
  if (fd_ >= 0) ::close(fd_);
}

void MappedFile::Release(size_t offset, size_t length) const {
  if (data_ == nullptr || length == 0) return;
  // Only whole pages inside the range: neighbours may still be in use.
  size_t page = PageSize();
  size_t begin = (offset + page - 1) / page * page;
  size_t end = std::min(size_, offset + length) / page * page;
  if (end > begin) ::madvise(data_ + begin, end - begin, MADV_DONTNEED);
}

}  // namespace weft
