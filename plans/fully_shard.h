// -----------------------------------------------------------------------------
// File: plans/fully_shard.h
// -----------------------------------------------------------------------------
//
// Sharded data parallelism with torch's fully_shard (FSDP2) semantics over a
// `dp_shard` group: each parameter (the rank's tensor-parallel shard of it,
// if any) is cut along dim 0 by torch.chunk rules, one piece per rank of the
// group, and only the pieces are parameters: the optimizer, its fp32 master
// weights and moments, and the gradients hold 1/N of the model.
//
// The units are each decoder layer and, on their own, the embedding, the
// final norm and the head (a tied head shares the embedding's unit). Before
// a unit runs forward, a pre-hook all-gathers its pieces in one collective
// (a flat buffer, uneven pieces allowed) through an autograd function whose
// backward reduce-scatters the gradients (one collective per unit, in
// `reduce_dtype`, averaged over the group as data parallelism averages) into
// the pieces' gradients and frees the gathered memory. Each layer's pre-hook
// also starts the next layer's all-gather, which runs while it computes.
// With reshard_after_forward a layer's gathered memory is freed after its
// forward too and refilled just before its backward. Reshard() drops what is
// left (the trainer calls it after the optimizer step).
//
//   ASSIGN_OR_RETURN(auto fsdp, FullyShard(*model, mesh.group("dp_shard")));
//   for (auto& [name, piece] : fsdp->parameters()) ...   // what the optimizer updates
//   model->Forward(inputs).loss.backward();             // piece.grad(): the averaged shard
//   fsdp->Reshard();
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "base/placement.h"
#include "models/causal_lm.h"
#include "models/init.h"
#include "models/pretrained.h"
#include "parallel/process_group.h"
#include "plans/shard_spec.h"

namespace weft {

/// One rank's pieces, read before sharding so that no rank ever holds a whole
/// parameter (ReadPieces), by Hugging Face name (a tied weight under both).
struct ShardedPieces {
  std::map<std::string, at::Tensor> piece;
  /// Each parameter's whole (tp-local) shape, the pieces' dim 0 cut from it.
  std::map<std::string, std::vector<int64_t>> full_shape;
};

struct FullyShardOptions {
  /// The dtype gradients are reduce-scattered in (float32 by default, as
  /// FSDP2's MixedPrecisionPolicy with reduce_dtype float32).
  at::ScalarType reduce_dtype = at::kFloat;
  /// FSDP2's reshard_after_forward for the decoder layers: their gathered
  /// parameters are freed after their forward and gathered again just
  /// before their backward (a hook on the layer's output), so a rank holds
  /// one layer's whole parameters at a time, not the model's. Off: kept from
  /// forward to backward (ZeRO-2-like, one gather per micro-batch). The
  /// embedding, the final norm and the head stay gathered through the step.
  bool reshard_after_forward = true;
  /// Pieces read beforehand (ReadPieces): the model's parameters may then all
  /// be on the meta device (built with LoadHooks::keep / InitOptions::keep
  /// false); a meta parameter named here is sharded from its piece.
  ShardedPieces pieces;
};

class FullyShardedModel {
 public:
  struct Unit;
  struct Param {
    std::string name;
    at::Tensor piece;                 // the leaf the optimizer updates (Shard(0))
    std::vector<int64_t> full_shape;  // the rank's whole (tp-local) shape
    int64_t rows = 0, offset = 0;     // dim-0 rows held and the first one
  };
  ~FullyShardedModel();

  /// Every piece, by the parameter's Hugging Face name, in model order.
  const std::vector<Param>& parameters() const { return params_; }
  const ProcessGroup& group() const { return *group_; }

  /// Drops the gathered tensors (after the optimizer step); the next
  /// forward gathers the updated pieces.
  void Reshard();

  /// The whole (tp-local) tensor of parameter `index` from every rank's
  /// `piece` (shaped like its piece: the parameter itself, or its optimizer
  /// state), gathered over the group. Collective.
  at::Tensor Gather(size_t index, const at::Tensor& piece) const;

  /// This rank's piece of `whole` (parameter `index`'s whole tensor).
  at::Tensor PieceOf(size_t index, const at::Tensor& whole) const;

 private:
  friend absl::StatusOr<std::shared_ptr<FullyShardedModel>> FullyShard(
      CausalLM& model, std::shared_ptr<const ProcessGroup> group, const FullyShardOptions& options);
  FullyShardedModel() = default;

  std::shared_ptr<const ProcessGroup> group_;
  std::vector<Param> params_;
  std::vector<std::shared_ptr<Unit>> units_;
};

/// Shards `model` (loaded whole or tp-sharded) over `group`; the model's
/// parameters become meta placeholders between steps. Parameters already on
/// the meta device (other pipeline stages') are left alone. Errors: a parameter
/// in no unit.
absl::StatusOr<std::shared_ptr<FullyShardedModel>> FullyShard(
    CausalLM& model, std::shared_ptr<const ProcessGroup> group,
    const FullyShardOptions& options = {});

/// Where ReadPieces reads from: a Hugging Face checkpoint `dir`, or, when it
/// is empty, transformers' initialisation (`init`, the same values as a whole
/// model's).
struct PieceSource {
  std::string dir;
  PretrainedOptions pretrained;  // with dir
  ModelConfig config;            // without dir
  ModelOptions model_options;
  InitOptions init;
  /// This tp rank's shards (PlanShards); empty without tensor parallelism.
  std::map<std::string, ShardSpec> tp_shards;
  /// The parameters this rank holds (a pipeline stage's); unset: all.
  std::function<bool(const std::string& name)> keep;
};

/// Reads (or initialises) only this rank's dim-0 piece `index` of `parts` of
/// every kept parameter's (tp-local) tensor: peak memory is the pieces, not the
/// model (at most one whole tensor while initialising). The result goes to
/// FullyShardOptions::pieces.
absl::StatusOr<ShardedPieces> ReadPieces(const PieceSource& source, int parts, int index);

/// `slice` of a tensor of `shape` with dim 0 narrowed further to rows
/// [offset, offset + length) of what it selects (its dim-0 ranges
/// concatenated): an FSDP piece of a tensor-parallel shard. Never an empty
/// dim-0 list (that would mean the whole dim): no rows is {start, start}.
Slice NarrowRows(const Slice& slice, const std::vector<int64_t>& shape, int64_t offset,
                 int64_t length);

}  // namespace weft
