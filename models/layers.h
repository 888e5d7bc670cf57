// The generic blocks every model file shares: Linear, Embedding, RMSNorm,
// rotary embeddings, activations. Parameters are created on the meta device
// (no memory) and filled by the loader (see pretrained.h); their names are
// Hugging Face's ("weight", "bias").
//
//   auto q_proj = std::make_shared<Linear>(LinearOptions(hidden, heads * head_dim).bias(false));
//   at::Tensor q = q_proj->forward(x);
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <string>
#include <utility>

#include "models/config.h"
#include "models/module.h"

namespace weft {

/// Options for `Linear`: LibTorch's LinearOptions plus the dtype.
///
///   auto q_proj = std::make_shared<Linear>(LinearOptions(hidden, heads * head_dim).bias(false));
struct LinearOptions {
  LinearOptions(int64_t in_features, int64_t out_features)
      : in_features_(in_features), out_features_(out_features) {}
  /// Size of each input sample.
  TORCH_ARG(int64_t, in_features);
  /// Size of each output sample.
  TORCH_ARG(int64_t, out_features);
  /// Whether the layer learns an additive bias. Default: true (as torch.nn.Linear).
  TORCH_ARG(bool, bias) = true;
  /// The parameters' dtype. Default: float32.
  TORCH_ARG(at::ScalarType, dtype) = at::kFloat;
};

/// y = x W^T + b; W is [out_features, in_features].
///
/// With a LoRA adapter (trainer/lora.h attaches one; PEFT's LoraLayer):
/// y = x W^T + b + scale * lora_B(lora_A(dropout(x))), inside the module's
/// hooks, so a tensor-parallel layer's collectives cover both terms.
class Linear : public Module {
 public:
  explicit Linear(const LinearOptions& options);
  at::Tensor forward(const at::Tensor& x);
  at::Tensor weight;
  at::Tensor bias;  // undefined when the layer has none
  /// The adapter's factors (submodules "lora_A" [r, in], "lora_B" [out, r]),
  /// or null.
  std::shared_ptr<Linear> lora_A, lora_B;
  double lora_scale = 0;
  double lora_dropout = 0;

 protected:
  void OnParametersReplaced() override;
};

/// Rows of `weight` [num_embeddings, embedding_dim] for each id.
class Embedding : public Module {
 public:
  Embedding(int64_t num_embeddings, int64_t embedding_dim, at::ScalarType dtype);
  at::Tensor forward(const at::Tensor& ids);
  at::Tensor weight;

 protected:
  void OnParametersReplaced() override;
};

/// Where an RMSNorm applies its weight; the models differ in the last
/// rounding. kAfterCast: Llama's (normalised in float32, cast back, then
/// scaled). kInFloat32: OLMo 2's (scaled in float32, then cast).
/// kOnePlusInFloat32: Gemma's, whose weight is an offset (x * (1 + w) in
/// float32, then cast; initialised to zeros, module type "GemmaRMSNorm").
enum class NormWeight { kAfterCast, kInFloat32, kOnePlusInFloat32 };

/// transformers' RMSNorm: x / sqrt(mean(x^2) + eps), computed in float32,
/// times its weight (see NormWeight).
class RMSNorm : public Module {
 public:
  RMSNorm(int64_t dim, double eps, at::ScalarType dtype, NormWeight how = NormWeight::kAfterCast);
  at::Tensor forward(const at::Tensor& x);
  at::Tensor weight;
  double eps;
  NormWeight how;

 protected:
  void OnParametersReplaced() override;
};

/// A top-k routing's (token, expert) pairs grouped by expert, for running all
/// experts as batched matrix products: each expert's tokens are one row
/// group of an [E, capacity, H] tensor (capacity: the largest group, the
/// rest zero padding).
///
///   ExpertGroups groups = ExpertGroups::Of(top_k_index, num_experts);
///   at::Tensor y = at::matmul(groups.Gather(x), w);          // [E, C, out]
///   at::Tensor out = groups.Combine(y, top_k_weights, x);    // [N, out]
struct ExpertGroups {
  static ExpertGroups Of(const at::Tensor& top_k_index, int64_t experts);
  /// x's rows [N, H] placed in their experts' groups: [E, capacity, H].
  at::Tensor Gather(const at::Tensor& x) const;
  /// Each token's sum over its pairs of weight * y[expert, row], [N, out],
  /// in `like`'s dtype.
  at::Tensor Combine(const at::Tensor& y, const at::Tensor& top_k_weights,
                     const at::Tensor& like) const;

  int64_t experts = 0, capacity = 0, k = 1;
  at::Tensor order;     // the pairs (flat index n * k + slot) sorted by expert
  at::Tensor expert;    // each sorted pair's expert
  at::Tensor position;  // and its row in that expert's group
  at::Tensor token;     // and its token
};

/// Options for `MoeExperts`.
struct MoeExpertsOptions {
  MoeExpertsOptions(int64_t num_experts, int64_t hidden_size, int64_t intermediate_size)
      : num_experts_(num_experts),
        hidden_size_(hidden_size),
        intermediate_size_(intermediate_size) {}
  TORCH_ARG(int64_t, num_experts);
  TORCH_ARG(int64_t, hidden_size);
  TORCH_ARG(int64_t, intermediate_size);
  /// config.json's hidden_act for the gate.
  TORCH_ARG(std::string, act) = "silu";
  TORCH_ARG(at::ScalarType, dtype) = at::kFloat;
  /// Batched matrix products over the experts (tokens grouped per expert,
  /// padded to the largest group); false: one expert at a time, as
  /// transformers' reference loop (for comparison).
  TORCH_ARG(bool, batched) = true;
};

/// Module type "MoeExperts" is a contract the plan engine relies on: fused
/// experts whose forward takes (x [N, H], top_k_index [N, k], top_k_weights
/// [N, k]) and whose parameters all have the experts on dim 0 (expert
/// parallelism slices dim 0 and remaps the indices). gpt-oss's experts, laid
/// out differently, keep that contract too.
///
/// transformers 5's fused experts of a MoE block, as it holds them in memory:
/// gate_up_proj [E, 2I, H] (each expert's gate rows, then its up rows) and
/// down_proj [E, H, I]. forward(x [N, H], top_k_index [N, k], top_k_weights
/// [N, k]) is sum over a token's k experts of weight * down(act(gate) * up).
///
///   auto experts = std::make_shared<MoeExperts>(MoeExpertsOptions(8, 2048, 768));
///   at::Tensor y = experts->forward(x, index, weights);
class MoeExperts : public Module {
 public:
  explicit MoeExperts(const MoeExpertsOptions& options);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& top_k_index,
                     const at::Tensor& top_k_weights);
  at::Tensor gate_up_proj, down_proj;

 protected:
  void OnParametersReplaced() override;

 private:
  MoeExpertsOptions options_;
};

/// What a decoder layer and its attention take, by name. `Hooked` sees them
/// as a list in this order (a hook may replace `hidden`, index 0).
///
///   h = layer->forward({h, cos, sin, mask}, cache);
struct LayerInputs {
  at::Tensor hidden;  // [B, T, hidden_size]
  at::Tensor cos;     // rotary cos, [B, T, head_dim]
  at::Tensor sin;     // rotary sin, [B, T, head_dim]
  at::Tensor mask;    // additive attention mask, [B, 1, T, S]

  Module::Tensors List() const { return {hidden, cos, sin, mask}; }
  static LayerInputs From(const Module::Tensors& list) {
    return {list.at(0), list.at(1), list.at(2), list.at(3)};
  }
  /// The same inputs with another hidden state (a sublayer's normed input).
  LayerInputs WithHidden(at::Tensor h) const { return {std::move(h), cos, sin, mask}; }
};

/// The activation named by config.json's hidden_act.
at::Tensor Activation(const std::string& name, const at::Tensor& x);

/// Rotary position embeddings with transformers' rope_scaling types.
class RotaryEmbedding {
 public:
  explicit RotaryEmbedding(const ModelConfig& config);
  /// cos and sin, [B, T, head_dim], for `position_ids` [B, T], in `dtype`.
  std::pair<at::Tensor, at::Tensor> CosSin(const at::Tensor& position_ids, at::ScalarType dtype);
  /// q * cos + rotate_half(q) * sin on [B, H, T, D] tensors.
  static at::Tensor Apply(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
  const at::Tensor& inv_freq() const { return inv_freq_; }
  double attention_scaling() const { return attention_scaling_; }

 private:
  ModelConfig config_;
  at::Tensor inv_freq_;  // float32, [head_dim / 2]
  double attention_scaling_ = 1.0;
};

}  // namespace weft
