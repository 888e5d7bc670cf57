// libFuzzer target: the safetensors header parser and the JSON parser on
// arbitrary bytes. Accepted headers must satisfy the invariants the reader
// relies on; anything else must be a clean error (no crash, leak or UB).
//
//   bash tools/fuzz.sh 60     # builds with clang (ASan + UBSan) and runs 60 s
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "checkpoint/json.h"
#include "checkpoint/safetensors_header.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto header = weft::ParseSafetensorsHeader(data, size);
  if (header.ok()) {
    const uint64_t data_size = size - header->data_offset;
    if (header->data_offset < 8 || header->data_offset > size) std::abort();
    std::vector<std::pair<uint64_t, uint64_t>> spans;
    for (const weft::TensorEntry& e : header->tensors) {
      if (e.begin > e.end || e.end > data_size) std::abort();
      uint64_t numel = 1;
      for (int64_t d : e.shape) numel *= static_cast<uint64_t>(d);
      if (e.nbytes() != numel * c10::elementSize(e.dtype)) std::abort();
      spans.emplace_back(e.begin, e.end);
    }
    std::sort(spans.begin(), spans.end());
    uint64_t cursor = 0;
    for (const auto& [begin, end] : spans) {
      if (begin != cursor) std::abort();
      cursor = end;
    }
    if (cursor != data_size) std::abort();
  }
  weft::ParseJson(absl::string_view(reinterpret_cast<const char*>(data), size)).ok();
  return 0;
}
