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
namespace {

absl::Status Invalid(const std::string& message) { return absl::InvalidArgumentError(message); }

std::string ShapeText(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// A non-negative integer field, or an error naming where it sits.
absl::StatusOr<uint64_t> Unsigned(const JsonValue& v, const std::string& where) {
  if (auto value = v.AsUint64()) return *value;
  std::string found = v.is_number() ? v.text : v.is_string() ? JsonQuote(v.text) : "a non-number";
  return Invalid(absl::StrCat(where, " is ", found, " (expected a non-negative integer)"));
}

absl::StatusOr<TensorEntry> ParseEntry(const std::string& name, const JsonValue& info) {
  const std::string what = absl::StrCat("tensor '", name, "'");
  if (!info.is_object()) return Invalid(absl::StrCat(what, ": entry is not a JSON object"));
  TensorEntry e;
  e.name = name;
  const JsonValue* dtype = info.Find("dtype");
  const JsonValue* shape = info.Find("shape");
  const JsonValue* offsets = info.Find("data_offsets");
  if (!dtype) return Invalid(absl::StrCat(what, ": missing field 'dtype'"));
  if (!shape) return Invalid(absl::StrCat(what, ": missing field 'shape'"));
  if (!offsets) return Invalid(absl::StrCat(what, ": missing field 'data_offsets'"));
  if (!dtype->is_string()) return Invalid(absl::StrCat(what, ": 'dtype' is not a string"));
  e.dtype_name = dtype->text;
  auto scalar = ScalarTypeFromSafetensors(dtype->text);
  if (!scalar.ok()) {
    return absl::Status(scalar.status().code(),
                        absl::StrCat(what, ": ", scalar.status().message()));
  }
  e.dtype = *scalar;
  if (!shape->is_array()) return Invalid(absl::StrCat(what, ": 'shape' is not an array"));
  const uint64_t element = c10::elementSize(e.dtype);
  uint64_t numel = 1;
  bool overflow = false;
  for (size_t i = 0; i < shape->items.size(); ++i) {
    ASSIGN_OR_RETURN(uint64_t dim,
                     Unsigned(shape->items[i], absl::StrCat(what, ": shape[", i, "]")));
    if (dim > static_cast<uint64_t>(INT64_MAX)) overflow = true;
    e.shape.push_back(static_cast<int64_t>(dim));
    if (dim != 0 && numel > UINT64_MAX / dim) overflow = true;
    numel *= dim;
  }
  if (!overflow && numel > UINT64_MAX / element) overflow = true;
  if (overflow) {
    std::vector<std::string> dims;
    for (const JsonValue& d : shape->items) dims.push_back(d.text);
    return Invalid(absl::StrCat(what, ": shape [", absl::StrJoin(dims, ", "), "] times ", element,
                                "-byte ", e.dtype_name, " overflows 64 bits"));
  }
  if (!offsets->is_array() || offsets->items.size() != 2) {
    return Invalid(absl::StrCat(what, ": 'data_offsets' is not a [begin, end] pair"));
  }
  ASSIGN_OR_RETURN(e.begin, Unsigned(offsets->items[0], absl::StrCat(what, ": data_offsets[0]")));
  ASSIGN_OR_RETURN(e.end, Unsigned(offsets->items[1], absl::StrCat(what, ": data_offsets[1]")));
  if (e.end < e.begin) {
    return Invalid(absl::StrCat(what, ": data_offsets [", e.begin, ", ", e.end,
                                "] end before they begin (expected begin <= end)"));
  }
  if (e.nbytes() != numel * element) {
    return Invalid(absl::StrCat(what, ": data_offsets [", e.begin, ", ", e.end, "] span ",
                                e.nbytes(), " bytes, but shape ", ShapeText(e.shape), " of ",
                                e.dtype_name, " needs ", numel * element));
  }
  return e;
}

}  // namespace

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(const uint8_t* bytes, uint64_t file_size) {
  if (file_size < 8) {
    return Invalid(absl::StrCat("file is ", file_size,
                                " bytes, too short for the 8-byte header length (expected >= 8)"));
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
  if (n > kMaxSafetensorsHeader) {
    return Invalid(absl::StrCat("header length ", n, " exceeds the limit of ",
                                kMaxSafetensorsHeader, " bytes"));
  }
  if (n > file_size - 8) {
    return Invalid(absl::StrCat("header length ", n, " runs past the end of the file (",
                                file_size - 8, " bytes follow the length)"));
  }
  absl::string_view text(reinterpret_cast<const char*>(bytes + 8), n);
  if (int64_t bad = FirstInvalidUtf8(text); bad >= 0) {
    return Invalid(absl::StrCat("header is not valid UTF-8 (byte ", bad, " of ", n, ")"));
  }
  if (text.empty() || text[0] != '{') {
    return Invalid("header does not start with '{' (expected a JSON object)");
  }
  auto json = ParseJson(text);
  if (!json.ok()) return Invalid(absl::StrCat("header: ", json.status().message()));
  if (!json->is_object()) return Invalid("header is not a JSON object");

  SafetensorsHeader h;
  h.header_length = n;
  h.data_offset = 8 + n;
  std::set<std::string> names;
  bool seen_metadata = false;
  for (const auto& [name, value] : json->members) {
    if (name == "__metadata__") {
      if (seen_metadata) return Invalid("duplicate '__metadata__' entry");
      seen_metadata = true;
      if (!value.is_object()) return Invalid("'__metadata__' is not an object of strings");
      for (const auto& [key, v] : value.members) {
        if (!v.is_string()) {
          return Invalid(absl::StrCat("'__metadata__' value for key '", key,
                                      "' is not a string (expected string values only)"));
        }
        h.metadata.emplace_back(key, v.text);
      }
      continue;
    }
    if (!names.insert(name).second) {
      return Invalid(absl::StrCat("duplicate tensor name '", name, "'"));
    }
    ASSIGN_OR_RETURN(TensorEntry entry, ParseEntry(name, value));
    h.tensors.push_back(std::move(entry));
  }

  // The offsets must tile the data section exactly.
  const uint64_t data_size = file_size - h.data_offset;
  std::vector<const TensorEntry*> order;
  for (const TensorEntry& e : h.tensors) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](const TensorEntry* a, const TensorEntry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t cursor = 0;
  const TensorEntry* previous = nullptr;
  for (const TensorEntry* e : order) {
    if (e->begin != cursor) {
      if (previous == nullptr) {
        return Invalid(absl::StrCat("tensor '", e->name, "': first tensor starts at data offset ",
                                    e->begin, " (expected 0)"));
      }
      return Invalid(absl::StrCat("tensor '", e->name, "' starts at data offset ", e->begin,
                                  " but '", previous->name, "' ends at ", cursor, " (",
                                  e->begin > cursor ? "a hole" : "an overlap",
                                  "; expected contiguous tensors)"));
    }
    cursor = e->end;
    previous = e;
  }
  if (cursor > data_size) {
    return Invalid(absl::StrCat("file is truncated: tensors end at data offset ", cursor,
                                " but the data section has ", data_size, " bytes"));
  }
  if (cursor < data_size) {
    return Invalid(absl::StrCat(data_size - cursor, " bytes after the last tensor (tensors end at ",
                                "data offset ", cursor, ", the data section has ", data_size,
                                " bytes)"));
  }
  return h;
}

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
    if (name == "__metadata__") return Invalid("tensor name '__metadata__' is reserved");
    if (!names.insert(name).second) {
      return Invalid(absl::StrCat(path, ": duplicate tensor name '", name, "'"));
    }
    auto dtype = SafetensorsDtypeName(tensor.scalar_type());
    if (!dtype.ok())
      return Invalid(absl::StrCat(path, ": tensor '", name, "': ", dtype.status().message()));
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
