// The interface of every causal language model in models/, the
// transformers loss, and the architecture registry.
//
//   CausalLMInputs inputs;
//   inputs.input_ids = ids;
//   inputs.labels = ids;
//   CausalLMOutput out = model->Forward(inputs);
//   out.loss.backward();
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "base/placement.h"
#include "models/config.h"
#include "models/module.h"

namespace weft {

/// Keys and values of the tokens seen so far, per layer, for incremental
/// decoding: pass the same cache to successive Forward calls.
struct KVCache {
  std::vector<at::Tensor> keys;  // per layer, [B, KV heads, S, head_dim]
  std::vector<at::Tensor> values;
  int64_t length = 0;  // S: tokens already cached
  /// Appends this step's `k`, `v` for `layer`; returns all keys and values.
  std::pair<at::Tensor, at::Tensor> Update(size_t layer, const at::Tensor& k, const at::Tensor& v);
};

struct CausalLMInputs {
  at::Tensor input_ids;       // int64 [B, T]
  at::Tensor attention_mask;  // optional [B, T] (1 keep, 0 padding)
  at::Tensor labels;          // optional int64 [B, T]; -100 is ignored
  at::Tensor position_ids;    // optional [B, T]; default: past..past+T-1
  bool output_hidden_states = false;
  /// Optional; with a cache, input_ids are the new tokens only and
  /// attention_mask (if any) covers the cached ones too.
  KVCache* cache = nullptr;
};

struct CausalLMOutput {
  at::Tensor logits;  // [B, T, V]
  at::Tensor loss;    // 0-d, when labels were given
  /// transformers' output_hidden_states: the embeddings, then each decoder
  /// layer's output, the last one after the final norm.
  std::vector<at::Tensor> hidden_states;
};

struct ModelOptions {
  at::ScalarType dtype = at::kFloat;
  std::string attn_implementation = "sdpa";
};

/// How checkpoints that keep one tensor per expert store a fused parameter
/// (transformers 5's weight converters, declared by the model file): the
/// parameter `<prefix>.<fused>` is the stack over experts e of the
/// concatenation along dim 0 of `<prefix>.<part>` for each part, with "{e}"
/// in a part replaced by the expert's index. Loading reads only the rows and
/// columns of each part a rank's slice needs.
///
///   {"mlp.experts.gate_up_proj",
///    {"mlp.experts.{e}.gate_proj.weight", "mlp.experts.{e}.up_proj.weight"}}
struct StackedExperts {
  std::string fused;
  std::vector<std::string> parts;
};

/// The layout whose `fused` name `name` ends with (after a dot), and in
/// `prefix` the module path before it; nullptr when none does.
const StackedExperts* LayoutFor(const std::vector<StackedExperts>& layouts, const std::string& name,
                                std::string* prefix);

/// transformers' causal-LM loss: logits[:, :-1] against labels[:, 1:],
/// cross-entropy in float32, ignore_index -100, mean over counted tokens.
at::Tensor CausalLMLoss(const at::Tensor& logits, const at::Tensor& labels);

class CausalLM : public Module {
 public:
  CausalLM(std::string type_name, ModelConfig config, ModelOptions options)
      : Module(std::move(type_name)), config(std::move(config)), options(std::move(options)) {}
  virtual CausalLMOutput Forward(const CausalLMInputs& inputs) = 0;
  const ModelConfig config;
  ModelOptions options;
  /// The loss of (logits, labels); the plan engine swaps in a vocab-parallel
  /// one (loss_parallel) that never gathers the logits.
  std::function<at::Tensor(const at::Tensor& logits, const at::Tensor& labels)> loss_function =
      CausalLMLoss;
  /// How each parameter a plan sharded is laid out over the mesh, by name
  /// (the plan engine records them, plans/engine.h); empty for a whole model.
  std::map<std::string, DTensorSpec> placements;
  /// The gradient transforms the plan engine registered on parameters (sums
  /// over the tp ranks sharing a replicated parameter or KV head), by name.
  /// Each maps a gradient whose first row is row `first_row` of the
  /// parameter to its transformed value, row by row, so a wrapper that
  /// replaces the parameters by dim-0 pieces (fully_shard) applies them to
  /// its own leaves.
  std::map<std::string, std::function<at::Tensor(const at::Tensor& grad, int64_t first_row)>>
      gradient_hooks;
  /// The per-expert checkpoint layouts of fused parameters (empty: every
  /// parameter is stored under its own name).
  std::vector<StackedExperts> checkpoint_layouts;
};

/// Default positions of the new tokens: past..past+T-1, padding or not, as
/// transformers' forward does (pass position_ids for left-padded batches).
at::Tensor DefaultPositionIds(const CausalLMInputs& inputs, int64_t past);

using CausalLMFactory =
    std::function<std::shared_ptr<CausalLM>(const ModelConfig&, const ModelOptions&)>;

/// Model files register their architecture ("LlamaForCausalLM") at load.
bool RegisterArchitecture(const std::string& architecture, CausalLMFactory factory);

/// Builds the module tree (parameters on the meta device, no memory).
/// Errors name the architecture and the ones weft has.
absl::StatusOr<std::shared_ptr<CausalLM>> CreateCausalLM(const ModelConfig& config,
                                                         const ModelOptions& options);

}  // namespace weft
