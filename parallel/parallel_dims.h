// -----------------------------------------------------------------------------
// File: parallel/parallel_dims.h
// -----------------------------------------------------------------------------
//
// ParallelDims: the degrees of a job's mesh and the arithmetic that follows
// from them, validated once (torchtitan's ParallelDims). Callers ask it
// instead of redoing the arithmetic: the mesh axes, each rank's share of the
// batch and the gradient accumulation, and how many ranks hold identical
// copies of a parameter's gradient (what a global gradient norm divides by).
//
//   ParallelDimsOptions options;
//   options.tp = 2;
//   options.global_batch = 8;
//   ASSIGN_OR_RETURN(ParallelDims dims, ParallelDims::Create(options, /*world_size=*/4));
//   dims.dp() == 2;  dims.local_batch() == 4;  dims.accumulation() == 1;
//   ASSIGN_OR_RETURN(DeviceMesh mesh, DeviceMesh::Create(*runtime, dims.mesh_axes()));
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "base/placement.h"
#include "parallel/device_mesh.h"

namespace weft {

struct ParallelDimsOptions {
  /// Data-parallel replicas; 0: WORLD_SIZE / tp.
  int dp = 0;
  /// Tensor-parallel degree.
  int tp = 1;
  /// Pipeline-parallel degree (ranks, not stages).
  int pp = 1;
  /// Sharded data parallelism (FSDP2's fully_shard): ranks sharing one
  /// replica's parameters, each holding 1/dp_shard; dp counts replicas (HSDP).
  int dp_shard = 1;
  /// Micro-batches per step through the pipeline; 0: from micro_batch, else
  /// pp (when it divides the per-rank batch).
  int64_t pp_microbatches = 0;
  /// Sequences per optimizer step over the whole job.
  int64_t global_batch = 1;
  /// Sequences per forward on one rank; 0: the whole per-rank batch.
  int64_t micro_batch = 0;
};

class ParallelDims {
 public:
  /// Checks the degrees against the world (the message names every degree
  /// and their product: `mesh dp(2) * tp(2) = 4 != WORLD_SIZE 3`) and the
  /// batch against dp and the micro-batch (`train.global_batch 7 is not
  /// divisible by dp 2`).
  static absl::StatusOr<ParallelDims> Create(const ParallelDimsOptions& options, int world_size);

  int dp() const { return dp_; }
  int tp() const { return tp_; }
  int pp() const { return pp_; }
  int dp_shard() const { return dp_shard_; }
  int world_size() const { return pp_ * dp_ * dp_shard_ * tp_; }
  bool dp_shard_enabled() const { return dp_shard_ > 1; }
  /// Ranks that each see their own part of the batch: dp * dp_shard.
  int data_parallel() const { return dp_ * dp_shard_; }
  bool pp_enabled() const { return pp_ > 1; }
  bool dp_enabled() const { return dp_ > 1; }
  bool tp_enabled() const { return tp_ > 1; }
  /// The mesh, outermost axis first: [pp,] dp, [dp_shard,] tp (torchtitan's
  /// order; pp and dp_shard only when > 1).
  std::vector<MeshAxis> mesh_axes() const;

  int64_t global_batch() const { return global_batch_; }
  /// Sequences per optimizer step on one rank: global_batch / (dp * dp_shard).
  int64_t local_batch() const { return local_batch_; }
  int64_t micro_batch() const { return micro_batch_; }
  /// Micro-batches per optimizer step: local_batch / micro_batch.
  int64_t accumulation() const { return local_batch_ / micro_batch_; }

  /// The ranks of the tp group holding identical copies of a parameter's
  /// gradient: tp for a replicated parameter (`spec` null or Replicate), the
  /// ranks sharing a replicated KV head, 1 for a shard.
  int GradReplication(const DTensorSpec* spec) const;

 private:
  ParallelDims(int pp, int dp, int dp_shard, int tp, int64_t global_batch, int64_t local_batch,
               int64_t micro_batch)
      : pp_(pp),
        dp_(dp),
        dp_shard_(dp_shard),
        tp_(tp),
        global_batch_(global_batch),
        local_batch_(local_batch),
        micro_batch_(micro_batch) {}

  int pp_;
  int dp_;
  int dp_shard_;
  int tp_;
  int64_t global_batch_;
  int64_t local_batch_;
  int64_t micro_batch_;
};

}  // namespace weft
