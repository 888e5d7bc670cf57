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
  if (o.pp < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("parallel.pp ", o.pp, " is not a degree (expected >= 1)"));
  }
  const int dp = o.dp > 0 ? o.dp : std::max(1, world_size / (o.tp * o.pp));
  if (o.pp > 1) {
    RETURN_IF_ERROR(ValidateMeshShape({{"pp", o.pp}, {"dp", dp}, {"tp", o.tp}}, world_size));
  } else {
    RETURN_IF_ERROR(ValidateMeshShape({{"dp", dp}, {"tp", o.tp}}, world_size));
  }
  if (o.global_batch % dp != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("train.global_batch ", o.global_batch, " is not divisible by dp ", dp));
  }
  const int64_t local_batch = o.global_batch / dp;
  if (o.pp > 1 && o.pp_microbatches > 0) {
    if (o.global_batch % (o.pp_microbatches * dp) != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "train.global_batch ", o.global_batch, " is not divisible by parallel.pp_microbatches ",
          o.pp_microbatches, " x dp ", dp, " (expected whole micro-batches on every rank)"));
    }
    const int64_t micro = local_batch / o.pp_microbatches;
    if (o.micro_batch > 0 && o.micro_batch != micro) {
      return absl::InvalidArgumentError(absl::StrCat(
          "train.micro_batch ", o.micro_batch, " disagrees with parallel.pp_microbatches ",
          o.pp_microbatches, " (the per-rank batch ", local_batch, " / ", o.pp_microbatches, " = ",
          micro, "; set one of them)"));
    }
    return ParallelDims(o.pp, dp, o.tp, o.global_batch, local_batch, micro);
  }
  int64_t micro = o.micro_batch > 0 ? o.micro_batch : local_batch;
  if (o.pp > 1 && o.micro_batch <= 0 && local_batch % o.pp == 0) micro = local_batch / o.pp;
  if (local_batch % micro != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("train.micro_batch ", micro, " does not divide the per-rank batch ",
                     local_batch, " (global_batch ", o.global_batch, " / dp ", dp, ")"));
  }
  return ParallelDims(o.pp, dp, o.tp, o.global_batch, local_batch, micro);
}

std::vector<MeshAxis> ParallelDims::mesh_axes() const {
  if (pp_ > 1) return {{"pp", pp_}, {"dp", dp_}, {"tp", tp_}};
  return {{"dp", dp_}, {"tp", tp_}};
}

int ParallelDims::GradReplication(const DTensorSpec* spec) const {
  if (tp_ == 1) return 1;
  if (spec == nullptr || spec->placements.empty()) return tp_;
  return spec->replicas;
}

}  // namespace weft
