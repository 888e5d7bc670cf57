// Data parallelism: average gradients over a group (the mesh's `dp` axis),
// in buckets, as DDP does: gradients are flattened into buffers of about
// `bucket_bytes` each (per dtype), each buffer is all-reduced once, and the
// results are copied back.
//
//   loss.backward();
//   AllReduceGradients(model->parameters(), mesh["dp"]);   // grads = mean over dp
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "parallel/process_group.h"

namespace weft {

struct GradientBucketStats {
  int buckets = 0;
  int64_t bytes = 0;
};

/// Averages the gradients of `parameters` over `group`. Parameters without a
/// gradient are skipped (on every rank alike: the same model, the same graph).
GradientBucketStats AllReduceGradients(const std::vector<at::Tensor>& parameters,
                                       const ProcessGroup& group, int64_t bucket_bytes = 25 << 20);

}  // namespace weft
