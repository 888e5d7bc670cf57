// -----------------------------------------------------------------------------
// File: base/slice.h
// -----------------------------------------------------------------------------
//
// The sharding vocabulary at the bottom of weft: which part of a tensor a
// rank holds (`Range`, `Slice`, read by the loader and written by the plan
// engine) and torch.chunk arithmetic (how a dim of `size` splits over
// `parts` ranks).
//
// DTensor's Shard(d) placement follows torch.chunk: every chunk has
// ceil(size / parts) elements except the tail, and trailing ranks may get
// nothing (size 5 over 4 ranks: 2, 2, 1, 0).
//
//   ChunkSpan s = ChunkOf(/*size=*/5, /*parts=*/4, /*index=*/2);  // {4, 1}
//   Slice rows = {{{s.offset, s.offset + s.length}}, {}};         // those rows, all columns
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace weft {

/// [start, end) along one dim.
struct Range {
  int64_t start = 0;
  int64_t end = 0;
};

/// Per dim, the ranges to take, concatenated in order. An empty list for a
/// dim means the whole dim; an empty Slice means the whole tensor.
using Slice = std::vector<std::vector<Range>>;

struct ChunkSpan {
  int64_t offset = 0;
  int64_t length = 0;
  bool operator==(const ChunkSpan& o) const { return offset == o.offset && length == o.length; }
};

/// The largest chunk: ceil(size / parts).
inline int64_t ChunkCapacity(int64_t size, int64_t parts) { return (size + parts - 1) / parts; }

/// The span of chunk `index` of `parts` over a dim of `size` (torch.chunk).
inline ChunkSpan ChunkOf(int64_t size, int64_t parts, int64_t index) {
  int64_t cap = ChunkCapacity(size, parts);
  int64_t begin = std::min(size, index * cap);
  int64_t end = std::min(size, begin + cap);
  return {begin, end - begin};
}

}  // namespace weft
