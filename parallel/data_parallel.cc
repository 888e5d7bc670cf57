#include "parallel/data_parallel.h"

#include <ATen/ATen.h>

namespace weft {

GradientBucketStats AllReduceGradients(const std::vector<at::Tensor>& parameters,
                                       const ProcessGroup& group, int64_t bucket_bytes) {
  GradientBucketStats stats;
  if (group.size() == 1) return stats;
  std::vector<at::Tensor> bucket;
  int64_t filled = 0;
  auto flush = [&] {
    if (bucket.empty()) return;
    std::vector<at::Tensor> flat;
    for (const at::Tensor& g : bucket) flat.push_back(g.reshape({-1}));
    at::Tensor buffer = at::cat(flat);
    group.AllReduce(buffer, ReduceOp::kAvg);
    int64_t offset = 0;
    for (const at::Tensor& g : bucket) {
      g.copy_(buffer.narrow(0, offset, g.numel()).view_as(g));
      offset += g.numel();
    }
    ++stats.buckets;
    stats.bytes += buffer.nbytes();
    bucket.clear();
    filled = 0;
  };
  for (const at::Tensor& p : parameters) {
    const at::Tensor& g = p.grad();
    if (!g.defined()) continue;
    if (!bucket.empty() &&
        (bucket.front().scalar_type() != g.scalar_type() || bucket.front().device() != g.device() ||
         filled + static_cast<int64_t>(g.nbytes()) > bucket_bytes)) {
      flush();
    }
    bucket.push_back(g);
    filled += static_cast<int64_t>(g.nbytes());
  }
  flush();
  return stats;
}

}  // namespace weft
