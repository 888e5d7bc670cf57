#include "checkpoint/safetensors.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "checkpoint/dtype.h"
#include "checkpoint/json.h"
#include "parallel/status.h"

namespace weft {

absl::StatusOr<std::shared_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  ASSIGN_OR_RETURN(std::shared_ptr<MappedFile> mapping, MappedFile::Open(path));
  auto header = ParseSafetensorsHeader(mapping->data(), mapping->size());
  if (!header.ok()) {
    return absl::Status(header.status().code(),
                        absl::StrCat(path, ": ", header.status().message()));
  }
  return std::shared_ptr<SafetensorsFile>(
      new SafetensorsFile(std::move(mapping), std::move(header).value()));
}

SafetensorsFile::SafetensorsFile(std::shared_ptr<MappedFile> mapping, SafetensorsHeader header)
    : mapping_(std::move(mapping)), header_(std::move(header)) {
  for (size_t i = 0; i < header_.tensors.size(); ++i) index_[header_.tensors[i].name] = i;
}

const TensorEntry* SafetensorsFile::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

at::Tensor SafetensorsFile::Get(const std::string& name) const {
  const TensorEntry* entry = Find(name);
  TORCH_CHECK(entry != nullptr, path(), ": no tensor named '", name, "'");
  return Get(*entry);
}

at::Tensor SafetensorsFile::Get(const TensorEntry& entry) const {
  auto options = at::TensorOptions().dtype(entry.dtype).device(at::kCPU);
  const uint8_t* bytes = Data(entry);
  size_t element = c10::elementSize(entry.dtype);
  if (entry.nbytes() == 0 || reinterpret_cast<uintptr_t>(bytes) % element != 0) {
    // The format does not promise alignment: copy what is not aligned.
    at::Tensor copy = at::empty(entry.shape, options);
    if (entry.nbytes() > 0) std::memcpy(copy.data_ptr(), bytes, entry.nbytes());
    return copy;
  }
  std::shared_ptr<MappedFile> keep = mapping_;
  return at::from_blob(
      const_cast<uint8_t*>(bytes), entry.shape, [keep](void*) mutable { keep.reset(); }, options);
}

namespace {

absl::Status WriteAll(int fd, const void* data, size_t size, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd, p, std::min<size_t>(size, 1 << 30));
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::UnavailableError(absl::StrCat("write(", path, "): ", std::strerror(errno),
                                                 " (errno ", errno, ") [", __FILE__, ":", __LINE__,
                                                 "]"));
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

std::string Dirname(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace

absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                              const std::vector<std::pair<std::string, std::string>>& metadata) {
  struct Item {
    std::string name;
    std::string dtype;
    at::Tensor tensor;  // CPU, contiguous
  };
  std::vector<Item> items;
  std::set<std::string> names;
  for (const auto& [name, tensor] : tensors) {
    if (name == "__metadata__")
      return absl::InvalidArgumentError("tensor name '__metadata__' is reserved");
    if (!names.insert(name).second) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": duplicate tensor name '", name, "'"));
    }
    auto dtype = SafetensorsDtypeName(tensor.scalar_type());
    if (!dtype.ok())
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor '", name, "': ", dtype.status().message()));
    items.push_back({name, *dtype, tensor.to(at::kCPU).contiguous()});
  }
  // Largest elements first, then by name: every tensor starts aligned.
  std::sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
    size_t ea = a.tensor.element_size(), eb = b.tensor.element_size();
    return ea != eb ? ea > eb : a.name < b.name;
  });
  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    for (size_t i = 0; i < metadata.size(); ++i) {
      absl::StrAppend(&header, i ? "," : "", JsonQuote(metadata[i].first), ":",
                      JsonQuote(metadata[i].second));
    }
    header += "}";
  }
  uint64_t offset = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    uint64_t nbytes = items[i].tensor.nbytes();
    absl::StrAppend(&header, (i || !metadata.empty()) ? "," : "", JsonQuote(items[i].name),
                    ":{\"dtype\":\"", items[i].dtype, "\",\"shape\":[",
                    absl::StrJoin(items[i].tensor.sizes(), ","), "],\"data_offsets\":[", offset,
                    ",", offset + nbytes, "]}");
    offset += nbytes;
  }
  header += "}";
  header.append((8 - (8 + header.size()) % 8) % 8, ' ');
  uint8_t length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<uint8_t>(header.size() >> (8 * i));

  std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrCat("open(", tmp, "): ", std::strerror(errno), " (errno ", errno, ")"));
  }
  absl::Status status = WriteAll(fd, length, 8, tmp);
  if (status.ok()) status = WriteAll(fd, header.data(), header.size(), tmp);
  for (const Item& item : items) {
    if (!status.ok()) break;
    status = WriteAll(fd, item.tensor.data_ptr(), item.tensor.nbytes(), tmp);
  }
  if (status.ok() && ::fsync(fd) != 0) {
    status = absl::UnavailableError(absl::StrCat("fsync(", tmp, "): ", std::strerror(errno)));
  }
  if (::close(fd) != 0 && status.ok()) {
    status = absl::UnavailableError(absl::StrCat("close(", tmp, "): ", std::strerror(errno)));
  }
  if (status.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    status = absl::UnavailableError(
        absl::StrCat("rename(", tmp, ", ", path, "): ", std::strerror(errno)));
  }
  if (!status.ok()) {
    ::unlink(tmp.c_str());
    return status;
  }
  int dir = ::open(Dirname(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    ::fsync(dir);
    ::close(dir);
  }
  return absl::OkStatus();
}

}  // namespace weft
