// -----------------------------------------------------------------------------
// File: plans/engine.h
// -----------------------------------------------------------------------------
//
// The plan engine: a Hugging Face checkpoint (or a config) + a tp_plan ->
// this rank's shard of an unmodified model, with the collectives wired
// through module hooks. The styles themselves are records in styles.h; the
// engine resolves the plan, validates every sharded dim before any
// allocation, loads (or initialises) only this rank's slices, asks each
// style to wire its modules, and records each parameter's DTensor placement
// on the model (CausalLM::placements). The hooks hold the tp group, so it
// lives as long as the model.
//
//   ASSIGN_OR_RETURN(Plan plan, LoadPlanFile("plans/llama.yaml"));
//   ASSIGN_OR_RETURN(auto model, FromPretrainedTensorParallel(dir, options, plan,
//   mesh.group("tp"))); CausalLMInputs inputs; inputs.input_ids = ids; CausalLMOutput out =
//   model->Forward(inputs);  // logits as at TP=1 const DTensorSpec* q = ParameterPlacement(*model,
//   "model.layers.0.self_attn.q_proj.weight");
//   // q->placements[0] == Placement::Shard(0), q->offsets, q->global_shape, ...
//
// docs/plan_styles.md describes every style; uneven shards follow
// torch.chunk for dims without head structure; dims that split attention
// heads, packed parts, the experts of grouped_gemm and lm_head under
// loss_parallel must divide by tp (one-line errors naming module, parameter,
// dim, size and tp); tp larger than num_key_value_heads (a multiple of it)
// replicates KV heads.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "base/placement.h"
#include "models/causal_lm.h"
#include "models/init.h"
#include "models/pretrained.h"
#include "parallel/process_group.h"
#include "plans/plan.h"
#include "plans/shard_spec.h"

namespace weft {

/// Resolves and validates `plan` for rank `rank` of `tp` ranks against a
/// model built on the meta device. Errors name module, parameter, dim, size
/// and tp. Parameters the plan does not cover are absent (replicated), except
/// the replicated parameters inside a reduced region (a MoE block's router),
/// which get a replicated_with_grad_allreduce entry keyed by the region's key.
absl::StatusOr<std::map<std::string, ShardSpec>> PlanShards(CausalLM& model, const Plan& plan,
                                                            int tp, int rank,
                                                            const ResolveOptions& resolve = {});

/// Every tp rank's placements (index: tp rank) of the model `config` builds,
/// from a model on the meta device: what checkpoints and the Hugging Face
/// export need to place other ranks' shards.
absl::StatusOr<std::vector<std::map<std::string, DTensorSpec>>> PlanPlacements(
    const ModelConfig& config, const ModelOptions& options, const Plan& plan, int tp,
    const ResolveOptions& resolve = {});

struct TensorParallelOptions {
  ResolveOptions resolve;
  /// Vocab-parallel cross-entropy: lm_head stays column-parallel (no gather),
  /// Forward returns this rank's slice of the logits, and the loss is
  /// computed from the shards (max, sum of exponentials and the target logit
  /// all-reduced), so the full logits never exist.
  bool loss_parallel = false;
  /// The parameters this rank holds (its pipeline stages'); the others stay
  /// on the meta device, unread. Unset: all.
  std::function<bool(const std::string& name)> keep;
};

/// from_pretrained for this rank of `tp`: loads only its slices.
absl::StatusOr<std::shared_ptr<CausalLM>> FromPretrainedTensorParallel(
    const std::string& dir, const PretrainedOptions& options, const Plan& plan,
    std::shared_ptr<const ProcessGroup> tp, const TensorParallelOptions& tp_options = {});

/// A model initialised from `config` (models/init.h) as this rank of `tp`
/// holds it: the same values the whole model would have, sliced.
absl::StatusOr<std::shared_ptr<CausalLM>> InitTensorParallel(
    const ModelConfig& config, const ModelOptions& options, const InitOptions& init,
    const Plan& plan, std::shared_ptr<const ProcessGroup> tp,
    const TensorParallelOptions& tp_options = {});

/// Wires the collectives of `plan` into `model`, whose parameters already
/// hold this rank's slices (`shards`, from PlanShards for this rank of `tp`),
/// and records the placements on the model. A parameter whose shape is not
/// its shard's local shape is an error.
absl::Status ApplyTensorParallel(CausalLM& model, const std::map<std::string, ShardSpec>& shards,
                                 std::shared_ptr<const ProcessGroup> tp,
                                 const TensorParallelOptions& options = {});

/// The placement of parameter `name` of a model the engine sharded, with the
/// mesh axis set to the group's name; nullptr for parameters the plan does
/// not cover and for models never sharded. Reads CausalLM::placements.
const DTensorSpec* ParameterPlacement(const CausalLM& model, const std::string& name);

/// The vocab-parallel causal-LM loss over `group` (logits: this rank's vocab
/// shard, [B, T, V/tp], rows [rank * V/tp, (rank + 1) * V/tp)).
at::Tensor VocabParallelCausalLMLoss(const at::Tensor& logits, const at::Tensor& labels,
                                     const ProcessGroup& group);

}  // namespace weft
