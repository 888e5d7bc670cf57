// Qwen3-MoE: Qwen3MoeForCausalLM with transformers' module names.
//
// Qwen3's attention (per-head q_norm, k_norm) with, in the sparse layers, a
// MoE block: mlp.gate (a top-k softmax router, norm_topk_prob) over
// mlp.experts held fused as transformers 5 holds them (gate_up_proj
// [E, 2I, H], down_proj [E, H, I]); mlp_only_layers and decoder_sparse_step
// pick the dense layers (Llama's MLP). Checkpoints with one tensor per expert
// load through the layouts declared below. The whole forward is in this
// file, top to bottom.
#include <ATen/ATen.h>
#include <torch/nn/modules/container/modulelist.h>

#include <algorithm>

#include "models/attention.h"
#include "models/causal_lm.h"
#include "models/layers.h"

namespace weft {
namespace {

// Copied from models/qwen3.cc Qwen3Attention with Qwen3->Qwen3Moe
class Qwen3MoeAttention : public Module {
 public:
  Qwen3MoeAttention(const ModelConfig& c, const ModelOptions& o, int64_t layer)
      : Module("Qwen3MoeAttention"),
        layer_(layer),
        heads_(c.num_attention_heads),
        kv_heads_(c.num_key_value_heads),
        head_dim_(c.head_dim),
        attention_(GetAttention(o.attn_implementation)) {
    q_proj = register_module(
        "q_proj", std::make_shared<Linear>(LinearOptions(c.hidden_size, heads_ * head_dim_)
                                               .bias(c.attention_bias)
                                               .dtype(o.dtype)));
    k_proj = register_module(
        "k_proj", std::make_shared<Linear>(LinearOptions(c.hidden_size, kv_heads_ * head_dim_)
                                               .bias(c.attention_bias)
                                               .dtype(o.dtype)));
    v_proj = register_module(
        "v_proj", std::make_shared<Linear>(LinearOptions(c.hidden_size, kv_heads_ * head_dim_)
                                               .bias(c.attention_bias)
                                               .dtype(o.dtype)));
    q_norm =
        register_module("q_norm", std::make_shared<RMSNorm>(head_dim_, c.rms_norm_eps, o.dtype));
    k_norm =
        register_module("k_norm", std::make_shared<RMSNorm>(head_dim_, c.rms_norm_eps, o.dtype));
    o_proj = register_module(
        "o_proj", std::make_shared<Linear>(LinearOptions(heads_ * head_dim_, c.hidden_size)
                                               .bias(c.attention_bias)
                                               .dtype(o.dtype)));
  }

  at::Tensor forward(const LayerInputs& inputs, KVCache* cache) {
    // By value: activation checkpointing may run the body again in backward.
    return Hooked(inputs.List(), [this, cache](const Tensors& list) {
      const LayerInputs in = LayerInputs::From(list);
      const int64_t b = in.hidden.size(0), t = in.hidden.size(1);
      // Head counts come from the projections' outputs, so a sharded
      // projection (fewer local heads) needs no change here.
      at::Tensor q =
          q_norm->forward(q_proj->forward(in.hidden).view({b, t, -1, head_dim_})).transpose(1, 2);
      at::Tensor k =
          k_norm->forward(k_proj->forward(in.hidden).view({b, t, -1, head_dim_})).transpose(1, 2);
      at::Tensor v = v_proj->forward(in.hidden).view({b, t, -1, head_dim_}).transpose(1, 2);
      q = RotaryEmbedding::Apply(q, in.cos, in.sin);
      k = RotaryEmbedding::Apply(k, in.cos, in.sin);
      if (cache != nullptr) std::tie(k, v) = cache->Update(layer_, k, v);
      at::Tensor out =
          attention_(q, k, v, in.mask, 1.0 / std::sqrt(static_cast<double>(head_dim_)));
      out = out.transpose(1, 2).reshape({b, t, -1});
      return o_proj->forward(out);
    });
  }

  std::shared_ptr<Linear> q_proj, k_proj, v_proj, o_proj;
  std::shared_ptr<RMSNorm> q_norm, k_norm;

 private:
  int64_t layer_;
  int64_t heads_, kv_heads_, head_dim_;
  AttentionFn attention_;  // resolved once, from ModelOptions::attn_implementation
};

// Copied from models/llama.cc LlamaMLP with Llama->Qwen3Moe
class Qwen3MoeMLP : public Module {
 public:
  Qwen3MoeMLP(const ModelConfig& c, const ModelOptions& o)
      : Module("Qwen3MoeMLP"), act_(c.hidden_act) {
    gate_proj = register_module(
        "gate_proj",
        std::make_shared<Linear>(
            LinearOptions(c.hidden_size, c.intermediate_size).bias(c.mlp_bias).dtype(o.dtype)));
    up_proj = register_module(
        "up_proj",
        std::make_shared<Linear>(
            LinearOptions(c.hidden_size, c.intermediate_size).bias(c.mlp_bias).dtype(o.dtype)));
    down_proj = register_module(
        "down_proj",
        std::make_shared<Linear>(
            LinearOptions(c.intermediate_size, c.hidden_size).bias(c.mlp_bias).dtype(o.dtype)));
  }

  at::Tensor forward(const at::Tensor& x) {
    return Hooked({x}, [this](const Tensors& in) {
      return down_proj->forward(Activation(act_, gate_proj->forward(in[0])) *
                                up_proj->forward(in[0]));
    });
  }

  std::shared_ptr<Linear> gate_proj, up_proj, down_proj;

 private:
  std::string act_;
};

// The MoE block: a top-k softmax router (mlp.gate) over the fused experts.
class Qwen3MoeSparseMoeBlock : public Module {
 public:
  Qwen3MoeSparseMoeBlock(const ModelConfig& c, const ModelOptions& o)
      : Module("Qwen3MoeSparseMoeBlock"),
        top_k_(static_cast<int64_t>(ConfigNumber(c, "num_experts_per_tok", 8))),
        norm_topk_prob_(ConfigBool(c, "norm_topk_prob", false)) {
    const int64_t experts = static_cast<int64_t>(
        ConfigNumber(c, "num_experts", ConfigNumber(c, "num_local_experts", 128)));
    TORCH_CHECK(top_k_ >= 1 && top_k_ <= experts, "config.json: num_experts_per_tok is ", top_k_,
                " (expected 1 to num_experts ", experts, ")");
    const int64_t intermediate =
        static_cast<int64_t>(ConfigNumber(c, "moe_intermediate_size", 768));
    gate = register_module(
        "gate",
        std::make_shared<Linear>(LinearOptions(c.hidden_size, experts).bias(false).dtype(o.dtype)));
    experts_ = register_module(
        "experts",
        std::make_shared<MoeExperts>(MoeExpertsOptions(experts, c.hidden_size, intermediate)
                                         .act(c.hidden_act)
                                         .dtype(o.dtype)));
  }

  at::Tensor forward(const at::Tensor& x) {
    return Hooked({x}, [this](const Tensors& in) {
      const at::Tensor flat = in[0].reshape({-1, in[0].size(-1)});
      at::Tensor logits = gate->forward(flat);
      at::Tensor probs = at::softmax(logits, -1, at::kFloat);
      auto [weights, index] = probs.topk(top_k_, -1);
      if (norm_topk_prob_) weights = weights / weights.sum(-1, /*keepdim=*/true);
      weights = weights.to(logits.scalar_type());
      return experts_->forward(flat, index, weights).view(in[0].sizes());
    });
  }

  std::shared_ptr<Linear> gate;
  std::shared_ptr<MoeExperts> experts_;

 private:
  int64_t top_k_;
  bool norm_topk_prob_;
};

class Qwen3MoeDecoderLayer : public Module {
 public:
  Qwen3MoeDecoderLayer(const ModelConfig& c, const ModelOptions& o, int64_t layer)
      : Module("Qwen3MoeDecoderLayer") {
    self_attn = register_module("self_attn", std::make_shared<Qwen3MoeAttention>(c, o, layer));
    // Sparse unless listed in mlp_only_layers or off decoder_sparse_step.
    const std::vector<int64_t> dense = ConfigInts(c, "mlp_only_layers", {});
    const int64_t step = static_cast<int64_t>(ConfigNumber(c, "decoder_sparse_step", 1));
    const int64_t experts = static_cast<int64_t>(
        ConfigNumber(c, "num_experts", ConfigNumber(c, "num_local_experts", 128)));
    const bool sparse = std::find(dense.begin(), dense.end(), layer) == dense.end() &&
                        experts > 0 && step > 0 && (layer + 1) % step == 0;
    if (sparse) {
      moe = register_module("mlp", std::make_shared<Qwen3MoeSparseMoeBlock>(c, o));
    } else {
      mlp = register_module("mlp", std::make_shared<Qwen3MoeMLP>(c, o));
    }
    input_layernorm = register_module(
        "input_layernorm", std::make_shared<RMSNorm>(c.hidden_size, c.rms_norm_eps, o.dtype));
    post_attention_layernorm =
        register_module("post_attention_layernorm",
                        std::make_shared<RMSNorm>(c.hidden_size, c.rms_norm_eps, o.dtype));
  }

  at::Tensor forward(const LayerInputs& inputs, KVCache* cache) {
    // By value: activation checkpointing may run the body again in backward.
    return Hooked(inputs.List(), [this, cache](const Tensors& list) {
      const LayerInputs in = LayerInputs::From(list);
      at::Tensor h =
          in.hidden + self_attn->forward(in.WithHidden(input_layernorm->forward(in.hidden)), cache);
      const at::Tensor normed = post_attention_layernorm->forward(h);
      return h + (moe ? moe->forward(normed) : mlp->forward(normed));
    });
  }

  std::shared_ptr<Qwen3MoeAttention> self_attn;
  std::shared_ptr<Qwen3MoeMLP> mlp;             // a dense layer's, or null
  std::shared_ptr<Qwen3MoeSparseMoeBlock> moe;  // a sparse layer's "mlp", or null
  std::shared_ptr<RMSNorm> input_layernorm, post_attention_layernorm;
};

// Copied from models/qwen3.cc Qwen3Model with Qwen3->Qwen3Moe
class Qwen3MoeModel : public Module {
 public:
  Qwen3MoeModel(const ModelConfig& c, const ModelOptions& o) : Module("Qwen3MoeModel"), rotary_(c) {
    TORCH_CHECK(!c.sliding_window.has_value(), "config.json: use_sliding_window is true with ",
                "sliding_window ", c.sliding_window.value_or(0),
                " (expected false: Qwen3Moe sliding-window layers are not supported yet)");
    embed_tokens = register_module(
        "embed_tokens", std::make_shared<Embedding>(c.vocab_size, c.hidden_size, o.dtype));
    layers = register_module("layers", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      layers->push_back(std::make_shared<Qwen3MoeDecoderLayer>(c, o, i));
    }
    norm =
        register_module("norm", std::make_shared<RMSNorm>(c.hidden_size, c.rms_norm_eps, o.dtype));
  }

  at::Tensor forward(const CausalLMInputs& inputs, std::vector<at::Tensor>* hidden_states) {
    at::Tensor h = embed_tokens->forward(inputs.input_ids);
    const int64_t b = h.size(0), t = h.size(1);
    const int64_t past = inputs.cache ? inputs.cache->length : 0;
    auto [cos, sin] =
        rotary_.CosSin(DefaultPositionIds(inputs, past).to(h.device()), h.scalar_type());
    at::Tensor mask = CausalMask(b, t, past, inputs.attention_mask, inputs.position_ids,
                                 /*sliding_window=*/0, h.scalar_type(), h.device());
    for (const auto& layer : *layers) {
      if (hidden_states) hidden_states->push_back(h);
      h = layer->as<Qwen3MoeDecoderLayer>()->forward({h, cos, sin, mask}, inputs.cache);
    }
    if (inputs.cache) inputs.cache->length += t;
    h = norm->forward(h);
    if (hidden_states) hidden_states->push_back(h);
    return h;
  }

  std::shared_ptr<Embedding> embed_tokens;
  torch::nn::ModuleList layers;  // Qwen3MoeDecoderLayer each
  std::shared_ptr<RMSNorm> norm;

 private:
  RotaryEmbedding rotary_;
};

class Qwen3MoeForCausalLM : public CausalLM {
 public:
  Qwen3MoeForCausalLM(const ModelConfig& c, const ModelOptions& o)
      : CausalLM("Qwen3MoeForCausalLM", c, o) {
    model = register_module("model", std::make_shared<Qwen3MoeModel>(c, o));
    // Checkpoints keep one tensor per expert (transformers 5 converts them).
    checkpoint_layouts = {{"mlp.experts.gate_up_proj",
                           {"mlp.experts.{e}.gate_proj.weight", "mlp.experts.{e}.up_proj.weight"}},
                          {"mlp.experts.down_proj", {"mlp.experts.{e}.down_proj.weight"}}};
    lm_head = register_module(
        "lm_head", std::make_shared<Linear>(
                       LinearOptions(c.hidden_size, c.vocab_size).bias(false).dtype(o.dtype)));
  }

  CausalLMOutput Forward(const CausalLMInputs& inputs) override {
    CausalLMOutput out;
    at::Tensor h =
        model->forward(inputs, inputs.output_hidden_states ? &out.hidden_states : nullptr);
    out.logits = lm_head->forward(h);
    if (inputs.labels.defined()) out.loss = loss_function(out.logits, inputs.labels);
    return out;
  }

  std::shared_ptr<Qwen3MoeModel> model;
  std::shared_ptr<Linear> lm_head;
};

const bool kRegistered = RegisterArchitecture(
    "Qwen3MoeForCausalLM",
    [](const ModelConfig& c, const ModelOptions& o) -> std::shared_ptr<CausalLM> {
      return std::make_shared<Qwen3MoeForCausalLM>(c, o);
    });

}  // namespace
}  // namespace weft
