#include "base/text_file.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "base/atomic_file.h"
#include "base/status.h"

namespace weft {

absl::StatusOr<std::string> ReadTextFile(const std::string& path, int* open_errno) {
  if (open_errno != nullptr) *open_errno = 0;
  // A directory opens as an empty stream and a FIFO blocks: only files.
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, S_ISDIR(st.st_mode) ? ": is a directory" : ": is not a regular file",
                     " (expected a file)"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    if (open_errno != nullptr) *open_errno = err;
    return absl::NotFoundError(absl::StrCat(path, ": cannot be opened (", std::strerror(err), ")"));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read failed"));
  return text.str();
}

absl::Status WriteTextFileAtomically(const std::string& path, const std::string& text) {
  ASSIGN_OR_RETURN(AtomicFile file, AtomicFile::Create(path));
  RETURN_IF_ERROR(file.Write(text.data(), text.size()));
  return file.Commit();
}

}  // namespace weft
