// -----------------------------------------------------------------------------
// File: base/placement.h
// -----------------------------------------------------------------------------
//
// DTensor's vocabulary for how a tensor is laid out over a mesh axis: each
// rank holds all of it (Replicate), a torch.chunk of one dim (Shard(d)), or
// a summand (Partial). The plan engine records one `DTensorSpec` per sharded
// parameter on the model it shards (CausalLM::placements); the trainer and
// the checkpoints read them.
//
//   DTensorSpec q = model->placements.at("model.layers.0.self_attn.q_proj.weight");
//   q.placements[0] == Placement::Shard(0);   // rows split over tp
//   q.ToString() == "Shard(0) [64, 64] -> [32, 64] at [32, 0]";
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/slice.h"

namespace weft {

/// DTensor's placement of a tensor over one mesh axis.
struct Placement {
  enum class Kind { kReplicate, kShard, kPartial };
  Kind kind = Kind::kReplicate;
  int64_t dim = 0;  // kShard: the tensor dim split (torch.chunk)

  static Placement Replicate() { return {Kind::kReplicate, 0}; }
  static Placement Shard(int64_t dim) { return {Kind::kShard, dim}; }
  static Placement Partial() { return {Kind::kPartial, 0}; }
  bool operator==(const Placement& o) const {
    return kind == o.kind && (kind != Kind::kShard || dim == o.dim);
  }
  bool operator!=(const Placement& o) const { return !(*this == o); }
  /// "Replicate()", "Shard(0)", "Partial(sum)".
  std::string ToString() const;
};

/// DTensor-style metadata of one parameter on this rank: mesh axis,
/// placements, global and local shapes and the part of the global tensor the
/// rank holds.
///
///   q_proj.weight [64, 64] at tp=2, rank 1: placements {Shard(0)},
///   local_shape [32, 64], offsets {32, 0}, ranges {{[32, 64)}, {}}.
///
/// Packed styles hold several ranges on their dim (offsets gives the first).
/// Expert parallelism (grouped_gemm): an expert's parameter belongs to the
/// stacked [num_experts, ...] tensor with placement Shard(0); `expert` is its
/// index, `owner` the rank holding it whole; other ranks hold an empty shard.
struct DTensorSpec {
  std::string mesh_axis = "tp";  // the process group's name once applied
  int mesh_size = 1;
  int mesh_rank = 0;
  std::vector<Placement> placements;  // one per mesh axis (the tp axis)
  /// The placement of the gradient autograd leaves on this rank: Partial
  /// where the engine sums it over the axis (replicated parameters used on
  /// sharded activations or in a reduced region), else as `placements`.
  Placement grad = Placement::Replicate();
  std::vector<int64_t> global_shape;
  std::vector<int64_t> local_shape;
  std::vector<int64_t> offsets;  // per dim, the first global index held
  Slice ranges;                  // per dim, the global ranges held (empty: all)
  /// Ranks of the axis holding this same data: the axis size for Replicate,
  /// 1 for a shard, tp / num_key_value_heads for a replicated KV head.
  int replicas = 1;
  /// Where only some rows are replicated (a packed q | k | v whose KV heads
  /// are replicated over tp / num_key_value_heads ranks): those local rows of
  /// dim 0, held by `replicas` ranks; the other rows are this rank's alone.
  /// Empty: `replicas` holds for every element.
  std::vector<Range> replicated_rows;
  int64_t expert = -1;  // grouped_gemm: the expert's index
  int owner = -1;       // grouped_gemm: the rank holding the expert
  /// "Shard(0) [64, 64] -> [32, 64] at [32, 0]".
  std::string ToString() const;
};

}  // namespace weft
