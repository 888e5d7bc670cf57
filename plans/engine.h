// The plan engine: a Hugging Face checkpoint + a tp_plan -> this rank's shard
// of an unmodified model, with the collectives wired through module hooks.
//
//   ASSIGN_OR_RETURN(Plan plan, LoadPlanFile("plans/llama.yaml"));
//   ASSIGN_OR_RETURN(auto model, FromPretrainedTensorParallel(dir, options, plan, mesh["tp"]));
//   CausalLMInputs inputs;
//   inputs.input_ids = ids;
//   CausalLMOutput out = model->Forward(inputs);  // logits as at TP=1
//   const DTensorSpec* q = ParameterPlacement(*model, "model.layers.0.self_attn.q_proj.weight");
//   // q->placements[0] == Placement::Shard(0), q->offsets, q->global_shape, ...
//
// Steps: build the module tree on the meta device; resolve the plan against
// its parameter and module names; validate every sharded dim (before any
// allocation); load only this rank's slices; install hooks. Every style of
// docs/plan_styles.md is implemented: colwise, rowwise, colwise_gather_output,
// rowwise_split_input, embedding_rowwise (vocab-parallel), embedding_colwise,
// packed_colwise (equal parts, and Phi-3's q | k | v), packed_rowwise,
// sequence_parallel (norms on sequence shards; the layer's residual stream is
// Shard(1), rowwise outputs reduce-scattered), replicated_with_grad_allreduce,
// all_reduce, local_colwise, local_rowwise, local, gather (a region whose
// output is all-reduced), and for MoE experts moe_tp_experts (experts'
// colwise/rowwise weights, one all-reduce per MoE block), grouped_gemm
// (expert parallelism: rank r holds experts [r*E/tp, (r+1)*E/tp) whole, the
// others as empty shards) and ep_router (the router replicated, its gradient
// summed).
//
// Uneven shards follow torch.chunk (ranks hold ceil(size/tp) rows, the tail
// fewer) for Linear and Embedding dims without head structure; dims that
// split attention heads, packed parts, the experts of grouped_gemm and
// lm_head under loss_parallel must divide by tp (one-line errors naming
// module, parameter, dim, size and tp). tp larger than num_key_value_heads
// (a multiple of it) replicates KV heads: each rank loads the KV head its
// query heads use.
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
  int64_t expert = -1;           // grouped_gemm: the expert's index
  int owner = -1;                // grouped_gemm: the rank holding the expert
  /// "Shard(0) [64, 64] -> [32, 64] at [32, 0]".
  std::string ToString() const;
};

/// How one parameter is split for one rank.
struct ShardSpec {
  Style style;
  std::string key;                    // the plan key that decided the style
  Slice slice;                        // what the rank loads (empty: all)
  std::vector<int64_t> global_shape;  // the full parameter's shape
  std::vector<int64_t> local_shape;   // this rank's shape
  int64_t kv_head = -1;               // KV head replicated on this rank, or -1
  int64_t kv_heads = 0;
  /// The module whose output is all-reduced for this parameter (gather,
  /// moe_tp_experts, grouped_gemm, ep_router: the MoE block), or empty. Inside
  /// a region, sharded modules add no collectives of their own.
  std::string region;
  DTensorSpec dtensor;  // the same facts, DTensor's way
};

/// Resolves and validates `plan` for rank `rank` of `tp` ranks against a
/// model built on the meta device. Errors name module, parameter, dim, size
/// and tp. Parameters the plan does not cover are absent (replicated), except
/// the replicated parameters inside a reduced region (a MoE block's router),
/// which get a replicated_with_grad_allreduce entry keyed by the region's key.
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

/// The placement of parameter `name` of a model that ApplyTensorParallel (or
/// FromPretrainedTensorParallel) sharded, with the mesh axis set to the
/// group's name; nullptr for parameters the plan does not cover and for
/// models never sharded. The record lives as long as the model.
const DTensorSpec* ParameterPlacement(const CausalLM& model, const std::string& name);

/// The vocab-parallel causal-LM loss over `group` (logits: this rank's vocab
/// shard, [B, T, V/tp], rows [rank * V/tp, (rank + 1) * V/tp)).
at::Tensor VocabParallelCausalLMLoss(const at::Tensor& logits, const at::Tensor& labels,
                                     const ProcessGroup& group);

}  // namespace weft
