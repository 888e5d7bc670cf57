#include "base/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/syscall.h"

namespace weft {
namespace {

size_t PageSize() {
  static const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  return page;
}

}  // namespace

absl::StatusOr<std::shared_ptr<MappedFile>> MappedFile::Open(const std::string& path) {
  // stat first: opening a FIFO (or a device) would block or read forever.
  struct stat before {};
  if (::stat(path.c_str(), &before) == 0 && !S_ISREG(before.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (!fd.ok()) return WEFT_SYSCALL_ERROR("open", path);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return WEFT_SYSCALL_ERROR("fstat", path);
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  size_t size = static_cast<size_t>(st.st_size);
  uint8_t* data = nullptr;
  if (size > 0) {
    // Private and writable: a tensor that views the file may be modified in
    // place without touching the file (copy-on-write).
    void* addr = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd.get(), 0);
    if (addr == MAP_FAILED) return WEFT_SYSCALL_ERROR("mmap", path);
    data = static_cast<uint8_t*>(addr);
  }
  return std::shared_ptr<MappedFile>(new MappedFile(path, std::move(fd), data, size));
}

MappedFile::MappedFile(std::string path, UniqueFd fd, uint8_t* data, size_t size)
    : path_(std::move(path)), fd_(std::move(fd)), data_(data), size_(size) {}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(data_, size_);
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
