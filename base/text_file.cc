#include "base/text_file.h"

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
