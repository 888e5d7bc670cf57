#include "checkpoint/inspect.h"

#include <algorithm>
#include <iomanip>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "checkpoint/checkpoint_dir.h"

namespace weft {
namespace {

std::string Human(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024 && unit < 4) value /= 1024, ++unit;
  return absl::StrFormat("%.1f %s", value, units[unit]);
}

std::string Basename(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace

absl::Status PrintInspect(const std::string& path, std::ostream& out) {
  {
    auto ckpt = Checkpoint::Open(path);
    if (!ckpt.ok()) return ckpt.status();
    std::vector<std::vector<std::string>> rows = {{"name", "dtype", "shape", "bytes", "file"}};
    for (const auto& [name, at] : (*ckpt)->tensors()) {
      rows.push_back({name, at.entry->dtype_name,
                      absl::StrCat("[", absl::StrJoin(at.entry->shape, ", "), "]"),
                      absl::StrCat(at.entry->nbytes()), Basename(at.file->path())});
    }
    std::vector<size_t> width(5, 0);
    for (const auto& row : rows) {
      for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
    }
    for (const auto& row : rows) {
      for (size_t c = 0; c < row.size(); ++c) {
        bool right = c == 3;
        out << (right ? std::right : std::left) << std::setw(c + 1 < row.size() ? width[c] : 0)
            << row[c] << (c + 1 < row.size() ? "  " : "\n");
      }
    }
    size_t files = (*ckpt)->files().size();
    out << (*ckpt)->tensors().size() << " tensors, " << (*ckpt)->total_bytes() << " bytes ("
        << Human((*ckpt)->total_bytes()) << ") in " << files << (files == 1 ? " file" : " files")
        << "\n";
    for (const auto& file : (*ckpt)->files()) {
      if (file->header().metadata.empty()) continue;
      out << "metadata of " << Basename(file->path()) << ":";
      for (const auto& [key, value] : file->header().metadata) out << " " << key << "=" << value;
      out << "\n";
    }
    return absl::OkStatus();
  }
}

}  // namespace weft
