#include "checkpoint/safetensors.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/atomic_file.h"
#include "base/dtype.h"
#include "base/json.h"
#include "base/status.h"

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

// A safetensors header for `entries` laid out in that order: 8 length
// bytes, then the JSON padded with spaces to a multiple of 8.
struct HeaderEntry {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  uint64_t nbytes = 0;
};

std::string Header(const std::vector<HeaderEntry>& entries,
                   const std::vector<std::pair<std::string, std::string>>& metadata) {
  std::string json = "{";
  if (!metadata.empty()) {
    json += "\"__metadata__\":{";
    for (size_t i = 0; i < metadata.size(); ++i) {
      absl::StrAppend(&json, i ? "," : "", JsonQuote(metadata[i].first), ":",
                      JsonQuote(metadata[i].second));
    }
    json += "}";
  }
  uint64_t offset = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    const HeaderEntry& e = entries[i];
    absl::StrAppend(&json, (i || !metadata.empty()) ? "," : "", JsonQuote(e.name), ":{\"dtype\":\"",
                    e.dtype, "\",\"shape\":[", absl::StrJoin(e.shape, ","), "],\"data_offsets\":[",
                    offset, ",", offset + e.nbytes, "]}");
    offset += e.nbytes;
  }
  json += "}";
  json.append((8 - (8 + json.size()) % 8) % 8, ' ');
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((json.size() >> (8 * i)) & 0xff);
  return out + json;
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
  std::vector<HeaderEntry> entries;
  for (const Item& item : items) {
    entries.push_back({item.name, item.dtype, item.tensor.sizes().vec(),
                       static_cast<uint64_t>(item.tensor.nbytes())});
  }
  const std::string header = Header(entries, metadata);
  ASSIGN_OR_RETURN(AtomicFile out, AtomicFile::Create(path));
  RETURN_IF_ERROR(out.Write(header.data(), header.size()));
  for (const Item& item : items)
    RETURN_IF_ERROR(out.Write(item.tensor.data_ptr(), item.tensor.nbytes()));
  return out.Commit();
}

uint64_t TensorDecl::nbytes() const {
  uint64_t n = c10::elementSize(dtype);
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

struct SafetensorsStreamWriter::Impl {
  std::string path;
  std::vector<TensorDecl> tensors;
  size_t next = 0;
  std::optional<AtomicFile> out;
};

SafetensorsStreamWriter::SafetensorsStreamWriter(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}
SafetensorsStreamWriter::~SafetensorsStreamWriter() = default;

absl::StatusOr<std::unique_ptr<SafetensorsStreamWriter>> SafetensorsStreamWriter::Create(
    const std::string& path, std::vector<TensorDecl> tensors,
    const std::vector<std::pair<std::string, std::string>>& metadata) {
  std::set<std::string> names;
  std::vector<HeaderEntry> entries;
  for (const TensorDecl& t : tensors) {
    if (t.name == "__metadata__" || !names.insert(t.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor name '", t.name, "' is reserved or given twice"));
    }
    ASSIGN_OR_RETURN(std::string dtype, SafetensorsDtypeName(t.dtype));
    entries.push_back({t.name, dtype, t.shape, t.nbytes()});
  }
  const std::string header = Header(entries, metadata);
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->tensors = std::move(tensors);
  ASSIGN_OR_RETURN(AtomicFile out, AtomicFile::Create(path));
  RETURN_IF_ERROR(out.Write(header.data(), header.size()));
  impl->out.emplace(std::move(out));
  return std::unique_ptr<SafetensorsStreamWriter>(new SafetensorsStreamWriter(std::move(impl)));
}

absl::Status SafetensorsStreamWriter::Append(const std::string& name, const at::Tensor& tensor) {
  Impl& w = *impl_;
  if (w.next >= w.tensors.size() || w.tensors[w.next].name != name) {
    return absl::InvalidArgumentError(absl::StrCat(
        w.path, ": tensor '", name, "' appended out of order (expected ",
        w.next < w.tensors.size() ? "'" + w.tensors[w.next].name + "'" : "no more tensors", ")"));
  }
  const TensorDecl& decl = w.tensors[w.next];
  if (tensor.scalar_type() != decl.dtype || tensor.sizes().vec() != decl.shape) {
    return absl::InvalidArgumentError(
        absl::StrCat(w.path, ": tensor '", name, "' is ", c10::toString(tensor.scalar_type()), " [",
                     absl::StrJoin(tensor.sizes(), ", "), "] but was declared ",
                     c10::toString(decl.dtype), " [", absl::StrJoin(decl.shape, ", "), "]"));
  }
  at::Tensor data = tensor.to(at::kCPU).contiguous();
  RETURN_IF_ERROR(w.out->Write(data.data_ptr(), data.nbytes()));
  ++w.next;
  return absl::OkStatus();
}

absl::Status SafetensorsStreamWriter::Commit() {
  Impl& w = *impl_;
  if (w.next != w.tensors.size()) {
    return absl::FailedPreconditionError(absl::StrCat(w.path, ": ", w.tensors.size() - w.next,
                                                      " declared tensors were never appended"));
  }
  return w.out->Commit();
}

}  // namespace weft
