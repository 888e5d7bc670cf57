// libFuzzer target: the safetensors header parser and the JSON parser on
// arbitrary bytes. Accepted headers must satisfy the invariants the reader
// relies on (abort() otherwise); anything else must be a clean error (no
// crash, leak or UB).
//
//   bash tools/fuzz.sh 60     # builds with clang (ASan + UBSan) and runs 60 s
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "base/json.h"
#include "checkpoint/safetensors_header.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto header = weft::ParseSafetensorsHeader(data, size);
  if (header.ok()) {
    if (header->data_offset != 8 + header->header_length || header->data_offset > size) {
      std::abort();
    }
    const uint64_t data_size = size - header->data_offset;
    std::set<std::string> names;
    std::vector<std::pair<uint64_t, uint64_t>> spans;
    for (const weft::TensorEntry& e : header->tensors) {
      if (!names.insert(e.name).second) std::abort();
      if (e.begin > e.end || e.end > data_size) std::abort();
      uint64_t numel = 1;
      for (int64_t d : e.shape) {
        if (d < 0) std::abort();
        numel *= static_cast<uint64_t>(d);
      }
      if (e.nbytes() != numel * c10::elementSize(e.dtype)) std::abort();
      spans.emplace_back(e.begin, e.end);
    }
    // The spans tile [0, data_size) exactly: no hole, no overlap.
    std::sort(spans.begin(), spans.end());
    uint64_t cursor = 0;
    for (const auto& [begin, end] : spans) {
      if (begin != cursor) std::abort();
      cursor = end;
    }
    if (cursor != data_size) std::abort();
  }
  auto json = weft::ParseJson(absl::string_view(reinterpret_cast<const char*>(data), size));
  (void)json;
  return 0;
}
