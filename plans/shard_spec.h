// -----------------------------------------------------------------------------
// File: plans/shard_spec.h
// -----------------------------------------------------------------------------
//
// ShardSpec: how the plan engine splits one parameter for one rank. It is
// the engine's working record (the style, the plan key, the slice to load,
// KV-head replication, the region); the part other packages read is its
// `dtensor` (base/placement.h), which the engine also records on the model.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/placement.h"
#include "base/slice.h"
#include "plans/styles.h"

namespace weft {

/// How one parameter is split for one rank.
struct ShardSpec {
  Style style = Style::kColwise;
  std::string key;                    // the plan key that decided the style
  Slice slice;                        // what the rank loads (empty: all)
  std::vector<int64_t> global_shape;  // the full parameter's shape
  std::vector<int64_t> local_shape;   // this rank's shape
  int64_t kv_head = -1;               // KV head replicated on this rank, or -1
  int64_t kv_heads = 0;
  /// With kv_head: the local rows holding it (a packed q | k | v's k and v
  /// parts); empty: every row (k_proj, v_proj).
  std::vector<Range> kv_rows;
  /// The module whose output is all-reduced for this parameter (gather,
  /// moe_tp_experts, grouped_gemm, ep_router: the MoE block), or empty. Inside
  /// a region, sharded modules add no collectives of their own.
  std::string region;
  DTensorSpec dtensor;  // the same facts, DTensor's way
};

}  // namespace weft
