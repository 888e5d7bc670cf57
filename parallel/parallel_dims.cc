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
  if (o.dp_shard < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("parallel.dp_shard ", o.dp_shard, " is not a degree (expected >= 1)"));
  }
  const int dp = o.dp > 0 ? o.dp : std::max(1, world_size / (o.tp * o.pp * o.dp_shard));
  std::vector<MeshAxis> axes;
  if (o.pp > 1) axes.push_back({"pp", o.pp});
  axes.push_back({"dp", dp});
  if (o.dp_shard > 1) axes.push_back({"dp_shard", o.dp_shard});
  axes.push_back({"tp", o.tp});
  RETURN_IF_ERROR(ValidateMeshShape(axes, world_size));
  const int replicas = dp * o.dp_shard;  // ranks with their own part of the batch
  const std::string dp_text = o.dp_shard > 1 ? absl::StrCat("dp ", dp, " x dp_shard ", o.dp_shard)
                                             : absl::StrCat("dp ", dp);
  if (o.global_batch % replicas != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("train.global_batch ", o.global_batch, " is not divisible by ", dp_text));
  }
  const int64_t local_batch = o.global_batch / replicas;
  if (o.pp > 1 && o.pp_microbatches > 0) {
    if (o.global_batch % (o.pp_microbatches * replicas) != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "train.global_batch ", o.global_batch, " is not divisible by parallel.pp_microbatches ",
          o.pp_microbatches, " x ", dp_text, " (expected whole micro-batches on every rank)"));
    }
    const int64_t micro = local_batch / o.pp_microbatches;
    if (o.micro_batch > 0 && o.micro_batch != micro) {
      return absl::InvalidArgumentError(absl::StrCat(
          "train.micro_batch ", o.micro_batch, " disagrees with parallel.pp_microbatches ",
          o.pp_microbatches, " (the per-rank batch ", local_batch, " / ", o.pp_microbatches, " = ",
          micro, "; set one of them)"));
    }
    return ParallelDims(o.pp, dp, o.dp_shard, o.tp, o.global_batch, local_batch, micro);
  }
  int64_t micro = o.micro_batch > 0 ? o.micro_batch : local_batch;
  if (o.pp > 1 && o.micro_batch <= 0 && local_batch % o.pp == 0) micro = local_batch / o.pp;
  if (local_batch % micro != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("train.micro_batch ", micro, " does not divide the per-rank batch ",
                     local_batch, " (global_batch ", o.global_batch, " / ", dp_text, ")"));
  }
  return ParallelDims(o.pp, dp, o.dp_shard, o.tp, o.global_batch, local_batch, micro);
}

std::vector<MeshAxis> ParallelDims::mesh_axes() const {
  std::vector<MeshAxis> axes;
  if (pp_ > 1) axes.push_back({"pp", pp_});
  axes.push_back({"dp", dp_});
  if (dp_shard_ > 1) axes.push_back({"dp_shard", dp_shard_});
  axes.push_back({"tp", tp_});
  return axes;
}

int ParallelDims::GradReplication(const DTensorSpec* spec) const {
  if (tp_ == 1) return 1;
  if (spec == nullptr || spec->placements.empty()) return tp_;
  return spec->replicas;
}

}  // namespace weft
