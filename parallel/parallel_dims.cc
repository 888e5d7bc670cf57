#include "parallel/parallel_dims.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "base/status.h"

namespace weft {

absl::StatusOr<ParallelDims> ParallelDims::Create(const ParallelDimsOptions& o, int world_size) {
  if (o.tp < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("parallel.tp ", o.tp, " is not a degree (expected >= 1)"));
  }
  const int dp = o.dp > 0 ? o.dp : std::max(1, world_size / o.tp);
  RETURN_IF_ERROR(ValidateMeshShape({{"dp", dp}, {"tp", o.tp}}, world_size));
  if (o.global_batch % dp != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("train.global_batch ", o.global_batch, " is not divisible by dp ", dp));
  }
  const int64_t local_batch = o.global_batch / dp;
  const int64_t micro = o.micro_batch > 0 ? o.micro_batch : local_batch;
  if (local_batch % micro != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("train.micro_batch ", micro, " does not divide the per-rank batch ",
                     local_batch, " (global_batch ", o.global_batch, " / dp ", dp, ")"));
  }
  return ParallelDims(dp, o.tp, o.global_batch, local_batch, micro);
}

std::vector<MeshAxis> ParallelDims::mesh_axes() const { return {{"dp", dp_}, {"tp", tp_}}; }

int ParallelDims::GradReplication(const DTensorSpec* spec) const {
  if (tp_ == 1) return 1;
  if (spec == nullptr || spec->placements.empty()) return tp_;
  return spec->replicas;
}

}  // namespace weft
