// Collectives that autograd differentiates: the building blocks of tensor
// parallelism (Megatron's f/g operators and their sequence-parallel kin).
//
//   forward                       backward
//   CopyToGroup:   identity       all-reduce           (enter a column-parallel region)
//   ReduceFromGroup: all-reduce   identity             (leave a row-parallel region)
//   GatherFromGroup: all-gather   split (my chunk)     (colwise output -> replicated)
//   ScatterToGroup:  split        all-gather           (replicated -> sharded input)
//   ReduceScatterToGroup: reduce-scatter  all-gather   (row-parallel output -> sequence shards)
//
// "split" and all shapes follow torch.chunk along `dim` (chunk.h), so uneven
// shards work. The group must outlive the graph (groups live as long as the
// Runtime that made them).
//
//   at::Tensor x = CopyToGroup(input, tp);        // grads of x are summed over tp
//   at::Tensor y = ReduceFromGroup(partial, tp);  // y = sum over tp of partial
#pragma once

#include <ATen/core/Tensor.h>

#include "parallel/process_group.h"

namespace weft {

at::Tensor CopyToGroup(const at::Tensor& input, const ProcessGroup& group);
at::Tensor ReduceFromGroup(const at::Tensor& input, const ProcessGroup& group);
at::Tensor GatherFromGroup(const at::Tensor& input, const ProcessGroup& group, int64_t dim);
at::Tensor ScatterToGroup(const at::Tensor& input, const ProcessGroup& group, int64_t dim);
at::Tensor ReduceScatterToGroup(const at::Tensor& input, const ProcessGroup& group, int64_t dim);

/// This member's torch.chunk of `input` along `dim` (no communication).
at::Tensor LocalChunk(const at::Tensor& input, const ProcessGroup& group, int64_t dim);

}  // namespace weft
