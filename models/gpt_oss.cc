// gpt-oss: GptOssForCausalLM with transformers' module names.
//
// model.embed_tokens -> model.layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj
// (biased) with per-head sinks, post_attention_layernorm, mlp.{router,
// experts}} -> model.norm -> lm_head. Attention alternates sliding-window
// and full layers (layer_types) and rotates with yarn; the MoE block routes
// each token to its top-k experts (biased router, softmax over the chosen
// logits) whose clamped SwiGLU experts are held fused. The whole forward is
// in this file, top to bottom.
#include <ATen/ATen.h>
#include <torch/nn/modules/container/modulelist.h>

#include <cmath>

#include "models/attention.h"
#include "models/causal_lm.h"
#include "models/layers.h"

namespace weft {
namespace {

// transformers' eager attention for gpt-oss: each head's sink logit joins
// the scores as one more column, the softmax runs over both (shifted by the
// row maximum, in the scores' dtype) and the sink's probability is dropped.
// Used whatever attn_implementation says.
at::Tensor AttentionWithSinks(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& mask, double scaling, const at::Tensor& sinks) {
  const int64_t groups = q.size(1) / k.size(1);
  at::Tensor keys = k.repeat_interleave(groups, 1), values = v.repeat_interleave(groups, 1);
  at::Tensor scores = at::matmul(q, keys.transpose(2, 3)) * scaling;
  if (mask.defined()) scores = scores + mask;
  at::Tensor sink = sinks.reshape({1, -1, 1, 1}).expand({q.size(0), -1, q.size(2), 1});
  at::Tensor combined = at::cat({scores, sink.to(scores.scalar_type())}, -1);
  combined = combined - std::get<0>(combined.max(-1, /*keepdim=*/true));
  at::Tensor probs = at::softmax(combined, -1, combined.scalar_type());
  probs = probs.narrow(-1, 0, probs.size(-1) - 1).to(values.scalar_type());
  return at::matmul(probs, values);
}

class GptOssAttention : public Module {
 public:
  GptOssAttention(const ModelConfig& c, const ModelOptions& o, int64_t layer)
      : Module("GptOssAttention"),
        layer_(layer),
        heads_(c.num_attention_heads),
        kv_heads_(c.num_key_value_heads),
        head_dim_(c.head_dim) {
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
    // One learned logit per head, a "sink" each query may attend to instead of
    // any key (its probability is dropped after the softmax).
    sinks = register_parameter(
        "sinks", at::empty({heads_}, at::TensorOptions().dtype(o.dtype).device(at::kMeta)));
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
      at::Tensor q = q_proj->forward(in.hidden).view({b, t, -1, head_dim_}).transpose(1, 2);
      at::Tensor k = k_proj->forward(in.hidden).view({b, t, -1, head_dim_}).transpose(1, 2);
      at::Tensor v = v_proj->forward(in.hidden).view({b, t, -1, head_dim_}).transpose(1, 2);
      q = RotaryEmbedding::Apply(q, in.cos, in.sin);
      k = RotaryEmbedding::Apply(k, in.cos, in.sin);
      if (cache != nullptr) std::tie(k, v) = cache->Update(layer_, k, v);
      at::Tensor out = AttentionWithSinks(q, k, v, in.mask,
                                          1.0 / std::sqrt(static_cast<double>(head_dim_)), sinks);
      out = out.transpose(1, 2).reshape({b, t, -1});
      return o_proj->forward(out);
    });
  }

  std::shared_ptr<Linear> q_proj, k_proj, v_proj, o_proj;
  at::Tensor sinks;  // [heads]

 protected:
  void OnParametersReplaced() override { sinks = named_parameters(/*recurse=*/false)["sinks"]; }

 private:
  int64_t layer_;
  int64_t heads_, kv_heads_, head_dim_;
};

// The experts, fused as gpt-oss stores them: gate_up_proj [E, H, 2I] with
// gate and up interleaved (even and odd columns), down_proj [E, I, H], each
// with a bias; the gate is a clamped SwiGLU: (clamp(up) + 1) * g * sigmoid(alpha g)
// with g = min(gate, limit). Batched over the experts (tokens grouped per
// expert, padded to the largest group).
class GptOssExperts : public Module {
 public:
  GptOssExperts(const ModelConfig& c, const ModelOptions& o)
      : Module("MoeExperts"),  // the fused-experts contract (models/layers.h)
        alpha_(ConfigNumber(c, "swiglu_alpha", 1.702)),
        limit_(ConfigNumber(c, "swiglu_limit", 7.0)) {
    const int64_t e = static_cast<int64_t>(ConfigNumber(c, "num_local_experts", 128)),
                  h = c.hidden_size, i = c.intermediate_size;
    auto meta = at::TensorOptions().dtype(o.dtype).device(at::kMeta);
    gate_up_proj = register_parameter("gate_up_proj", at::empty({e, h, 2 * i}, meta));
    gate_up_proj_bias = register_parameter("gate_up_proj_bias", at::empty({e, 2 * i}, meta));
    down_proj = register_parameter("down_proj", at::empty({e, i, h}, meta));
    down_proj_bias = register_parameter("down_proj_bias", at::empty({e, h}, meta));
  }

  at::Tensor forward(const at::Tensor& x, const at::Tensor& top_k_index,
                     const at::Tensor& top_k_weights) {
    return Hooked({x, top_k_index, top_k_weights}, [this](const Tensors& in) {
      const at::Tensor &hidden = in[0], &index = in[1], &weights = in[2];
      const ExpertGroups groups = ExpertGroups::Of(index, gate_up_proj.size(0));
      at::Tensor gate_up =
          at::matmul(groups.Gather(hidden), gate_up_proj) + gate_up_proj_bias.unsqueeze(1);
      at::Tensor gate = gate_up.slice(-1, 0, c10::nullopt, 2).clamp_max(limit_);
      at::Tensor up = gate_up.slice(-1, 1, c10::nullopt, 2).clamp(-limit_, limit_);
      at::Tensor glu = gate * at::sigmoid(gate * alpha_);
      at::Tensor y = at::matmul((up + 1) * glu, down_proj) + down_proj_bias.unsqueeze(1);
      return groups.Combine(y, weights, hidden);
    });
  }

  at::Tensor gate_up_proj, gate_up_proj_bias, down_proj, down_proj_bias;

 protected:
  void OnParametersReplaced() override {
    auto params = named_parameters(/*recurse=*/false);
    gate_up_proj = params["gate_up_proj"];
    gate_up_proj_bias = params["gate_up_proj_bias"];
    down_proj = params["down_proj"];
    down_proj_bias = params["down_proj_bias"];
  }

 private:
  double alpha_, limit_;
};

// The MoE block: a biased router whose top-k logits are softmaxed into the
// experts' weights.
class GptOssMLP : public Module {
 public:
  GptOssMLP(const ModelConfig& c, const ModelOptions& o)
      : Module("GptOssMLP"),
        top_k_(static_cast<int64_t>(ConfigNumber(c, "num_experts_per_tok", 4))) {
    const int64_t experts = static_cast<int64_t>(ConfigNumber(c, "num_local_experts", 128));
    TORCH_CHECK(top_k_ >= 1 && top_k_ <= experts, "config.json: num_experts_per_tok is ", top_k_,
                " (expected 1 to num_local_experts ", experts, ")");
    router = register_module(
        "router",
        std::make_shared<Linear>(LinearOptions(c.hidden_size, experts).bias(true).dtype(o.dtype)));
    experts_ = register_module("experts", std::make_shared<GptOssExperts>(c, o));
  }

  at::Tensor forward(const at::Tensor& x) {
    return Hooked({x}, [this](const Tensors& in) {
      const at::Tensor flat = in[0].reshape({-1, in[0].size(-1)});
      auto [top, index] = router->forward(flat).topk(top_k_, -1);
      const at::Tensor weights = at::softmax(top, 1, top.scalar_type());
      return experts_->forward(flat, index, weights).view(in[0].sizes());
    });
  }

  std::shared_ptr<Linear> router;
  std::shared_ptr<GptOssExperts> experts_;

 private:
  int64_t top_k_;
};

// Copied from models/llama.cc LlamaDecoderLayer with Llama->GptOss
class GptOssDecoderLayer : public Module {
 public:
  GptOssDecoderLayer(const ModelConfig& c, const ModelOptions& o, int64_t layer)
      : Module("GptOssDecoderLayer") {
    self_attn = register_module("self_attn", std::make_shared<GptOssAttention>(c, o, layer));
    mlp = register_module("mlp", std::make_shared<GptOssMLP>(c, o));
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
      return h + mlp->forward(post_attention_layernorm->forward(h));
    });
  }

  std::shared_ptr<GptOssAttention> self_attn;
  std::shared_ptr<GptOssMLP> mlp;
  std::shared_ptr<RMSNorm> input_layernorm, post_attention_layernorm;
};

class GptOssModel : public Module {
 public:
  GptOssModel(const ModelConfig& c, const ModelOptions& o) : Module("GptOssModel"), rotary_(c) {
    const int64_t window = static_cast<int64_t>(ConfigNumber(c, "sliding_window", 0));
    // transformers' default: sliding on even layers (0, 2, ...), full on odd.
    for (const std::string& type : LayerTypes(c, [](int64_t i) {
           return (i + 1) % 2 != 0 ? "sliding_attention" : "full_attention";
         })) {
      windows_.push_back(type == "sliding_attention" ? window : 0);
    }
    embed_tokens = register_module(
        "embed_tokens", std::make_shared<Embedding>(c.vocab_size, c.hidden_size, o.dtype));
    layers = register_module("layers", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      layers->push_back(std::make_shared<GptOssDecoderLayer>(c, o, i));
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
    at::Tensor full = CausalMask(b, t, past, inputs.attention_mask, inputs.position_ids, 0,
                                 h.scalar_type(), h.device());
    at::Tensor windowed;
    for (size_t i = 0; i < layers->size(); ++i) {
      if (hidden_states) hidden_states->push_back(h);
      if (windows_[i] > 0 && !windowed.defined()) {
        windowed = CausalMask(b, t, past, inputs.attention_mask, inputs.position_ids, windows_[i],
                              h.scalar_type(), h.device());
      }
      h = layers->ptr<GptOssDecoderLayer>(i)->forward(
          {h, cos, sin, windows_[i] > 0 ? windowed : full}, inputs.cache);
    }
    if (inputs.cache) inputs.cache->length += t;
    h = norm->forward(h);
    if (hidden_states) hidden_states->push_back(h);
    return h;
  }

  std::shared_ptr<Embedding> embed_tokens;
  torch::nn::ModuleList layers;  // GptOssDecoderLayer each
  std::shared_ptr<RMSNorm> norm;

 private:
  std::vector<int64_t> windows_;  // per layer: the window, or 0 (full attention)
  RotaryEmbedding rotary_;
};

// Copied from models/llama.cc LlamaForCausalLM with Llama->GptOss
class GptOssForCausalLM : public CausalLM {
 public:
  GptOssForCausalLM(const ModelConfig& c, const ModelOptions& o)
      : CausalLM("GptOssForCausalLM", c, o) {
    model = register_module("model", std::make_shared<GptOssModel>(c, o));
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

  std::shared_ptr<GptOssModel> model;
  std::shared_ptr<Linear> lm_head;
};

const bool kRegistered = RegisterArchitecture(
    "GptOssForCausalLM",
    [](const ModelConfig& c, const ModelOptions& o) -> std::shared_ptr<CausalLM> {
      return std::make_shared<GptOssForCausalLM>(c, o);
    });

}  // namespace
}  // namespace weft
