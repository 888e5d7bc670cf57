// The plan engine: a Hugging Face checkpoint + a tp_plan -> this rank's shard
// of an unmodified model, with the collectives wired through module hooks.
//
//   ASSIGN_OR_RETURN(Plan plan, LoadPlanFile("plans/llama.yaml"));
//   ASSIGN_OR_RETURN(auto model, FromPretrainedTensorParallel(dir, options, plan, mesh["tp"]));
//   CausalLMOutput out = model->Forward({.input_ids = ids});  // logits as at TP=1
//
// Steps: build the module tree on the meta device; resolve the plan against
// its parameter names; validate every sharded dim (before any allocation);
// load only this rank's slices; install hooks. Styles implemented so far:
// colwise, rowwise, colwise_gather_output, rowwise_split_input,
// embedding_rowwise (vocab-parallel), embedding_colwise, packed_colwise
// (equal parts, and Phi-3's q | k | v), replicated_with_grad_allreduce,
// all_reduce, local_colwise, local_rowwise, local. Others are rejected with
// a clear error. Shards are even (a dim not divisible by tp is an error).
// tp larger than num_key_value_heads (a multiple of it) replicates KV heads:
// each rank loads the KV head its query heads use.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "models/causal_lm.h"
#include "models/pretrained.h"
#include "parallel/process_group.h"
#include "plans/plan.h"

namespace weft {

/// How one parameter is split for one rank.
struct ShardSpec {
  Style style;
  std::string key;                    // the plan key that decided the style
  Slice slice;                        // what the rank loads (empty: all)
  std::vector<int64_t> global_shape;  // the full parameter's shape
  std::vector<int64_t> local_shape;   // this rank's shape
  int64_t kv_head = -1;               // KV head replicated on this rank, or -1
  int64_t kv_heads = 0;
};

/// Resolves and validates `plan` for rank `rank` of `tp` ranks against a
/// model built on the meta device. Errors name module, parameter, dim, size
/// and tp. Parameters the plan does not cover are absent (replicated).
absl::StatusOr<std::map<std::string, ShardSpec>> PlanShards(CausalLM& model, const Plan& plan,
                                                            int tp, int rank,
                                                            const ResolveOptions& resolve = {});

struct TensorParallelOptions {
  ResolveOptions resolve;
  /// Vocab-parallel cross-entropy: lm_head stays column-parallel (no gather),
  /// Forward returns this rank's slice of the logits, and the loss is
  /// computed from the shards (max, sum of exponentials and the target logit
  /// all-reduced), so the full logits never exist.
  bool loss_parallel = false;
};

absl::StatusOr<std::shared_ptr<CausalLM>> FromPretrainedTensorParallel(
    const std::string& dir, const PretrainedOptions& options, const Plan& plan,
    const ProcessGroup& tp, const TensorParallelOptions& tp_options = {});

/// Wires the collectives of `plan` into `model`, whose parameters already
/// hold this rank's slices (`shards`, from PlanShards for this rank of `tp`):
/// module hooks for the styles' forward/backward collectives, gradient hooks
/// summing replicated_with_grad_allreduce parameters and replicated KV heads
/// over tp, and the vocab-parallel loss when asked. A parameter whose shape
/// is not its shard's local shape is an error. For models not loaded from a
/// checkpoint (e.g. initialised from a config, see models/init.h).
absl::Status ApplyTensorParallel(CausalLM& model, const std::map<std::string, ShardSpec>& shards,
                                 const ProcessGroup& tp, const TensorParallelOptions& options = {});

/// The vocab-parallel causal-LM loss over `group` (logits: this rank's vocab
/// shard, [B, T, V/tp], rows [rank * V/tp, (rank + 1) * V/tp)).
at::Tensor VocabParallelCausalLMLoss(const at::Tensor& logits, const at::Tensor& labels,
                                     const ProcessGroup& group);

}  // namespace weft
