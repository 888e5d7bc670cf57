#include "checkpoint/safetensors_header.h"

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/dtype.h"
#include "base/json.h"
#include "base/status.h"

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

}  // namespace weft
