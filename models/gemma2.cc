// Gemma 2: Gemma2ForCausalLM with transformers' module names.
//
// model.embed_tokens (scaled by sqrt(hidden_size)) -> model.layers.N.{
// input_layernorm, self_attn.{q,k,v,o}_proj, post_attention_layernorm,
// pre_feedforward_layernorm, mlp.{gate,up,down}_proj,
// post_feedforward_layernorm} -> model.norm -> lm_head, tied. Norms are
// Gemma's x * (1 + w); attention scaled by query_pre_attn_scalar^-1/2 and
// soft-capped (attn_logit_softcapping), sliding-window on the layers
// layer_types marks; logits soft-capped (final_logit_softcapping). The whole
// forward is in this file, top to bottom.
#include <ATen/ATen.h>
#include <torch/nn/modules/container/modulelist.h>

#include <cmath>

#include "models/attention.h"
#include "models/causal_lm.h"
#include "models/layers.h"

namespace weft {
namespace {

// transformers' eager attention for Gemma: the scores soft-capped
// (cap * tanh(s / cap)) before the mask. Used whenever attn_logit_softcapping
// is set, whatever attn_implementation says (sdpa cannot soft-cap).
at::Tensor SoftcappedAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const at::Tensor& mask, double scaling, double cap) {
  const int64_t groups = q.size(1) / k.size(1);
  at::Tensor keys = k.repeat_interleave(groups, 1), values = v.repeat_interleave(groups, 1);
  at::Tensor scores = at::matmul(q, keys.transpose(2, 3)) * scaling;
  scores = at::tanh(scores / cap) * cap;
  if (mask.defined()) scores = scores + mask;
  return at::matmul(at::softmax(scores, -1, at::kFloat).to(q.scalar_type()), values);
}

class Gemma2Attention : public Module {
 public:
  Gemma2Attention(const ModelConfig& c, const ModelOptions& o, int64_t layer)
      : Module("Gemma2Attention"),
        layer_(layer),
        heads_(c.num_attention_heads),
        kv_heads_(c.num_key_value_heads),
        head_dim_(c.head_dim),
        scaling_(1.0 / std::sqrt(ConfigNumber(c, "query_pre_attn_scalar",
                                              static_cast<double>(c.head_dim)))),
        softcap_(ConfigNumber(c, "attn_logit_softcapping", 0.0)),
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
      at::Tensor out = softcap_ > 0 ? SoftcappedAttention(q, k, v, in.mask, scaling_, softcap_)
                                    : attention_(q, k, v, in.mask, scaling_);
      out = out.transpose(1, 2).reshape({b, t, -1});
      return o_proj->forward(out);
    });
  }

  std::shared_ptr<Linear> q_proj, k_proj, v_proj, o_proj;

 private:
  int64_t layer_;
  int64_t heads_, kv_heads_, head_dim_;
  double scaling_;         // query_pre_attn_scalar^-1/2
  double softcap_;         // attn_logit_softcapping, 0: none
  AttentionFn attention_;  // resolved once, from ModelOptions::attn_implementation
};

class Gemma2MLP : public Module {
 public:
  Gemma2MLP(const ModelConfig& c, const ModelOptions& o)
      : Module("Gemma2MLP"),
        act_(ConfigString(c, "hidden_activation",
                          ConfigString(c, "hidden_act", "gelu_pytorch_tanh"))) {
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

class Gemma2DecoderLayer : public Module {
 public:
  Gemma2DecoderLayer(const ModelConfig& c, const ModelOptions& o, int64_t layer)
      : Module("Gemma2DecoderLayer") {
    self_attn = register_module("self_attn", std::make_shared<Gemma2Attention>(c, o, layer));
    mlp = register_module("mlp", std::make_shared<Gemma2MLP>(c, o));
    auto norm = [&] {
      return std::make_shared<RMSNorm>(c.hidden_size, c.rms_norm_eps, o.dtype,
                                       NormWeight::kOnePlusInFloat32);
    };
    input_layernorm = register_module("input_layernorm", norm());
    post_attention_layernorm = register_module("post_attention_layernorm", norm());
    pre_feedforward_layernorm = register_module("pre_feedforward_layernorm", norm());
    post_feedforward_layernorm = register_module("post_feedforward_layernorm", norm());
  }

  at::Tensor forward(const LayerInputs& inputs, KVCache* cache) {
    // By value: activation checkpointing may run the body again in backward.
    return Hooked(inputs.List(), [this, cache](const Tensors& list) {
      const LayerInputs in = LayerInputs::From(list);
      // Four norms: before and after each sublayer, then the residual add.
      at::Tensor h = in.hidden + post_attention_layernorm->forward(self_attn->forward(
                                     in.WithHidden(input_layernorm->forward(in.hidden)), cache));
      return h + post_feedforward_layernorm->forward(
                     mlp->forward(pre_feedforward_layernorm->forward(h)));
    });
  }

  std::shared_ptr<Gemma2Attention> self_attn;
  std::shared_ptr<Gemma2MLP> mlp;
  std::shared_ptr<RMSNorm> input_layernorm, post_attention_layernorm, pre_feedforward_layernorm,
      post_feedforward_layernorm;
};

class Gemma2Model : public Module {
 public:
  Gemma2Model(const ModelConfig& c, const ModelOptions& o) : Module("Gemma2Model"), rotary_(c) {
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
      layers->push_back(std::make_shared<Gemma2DecoderLayer>(c, o, i));
    }
    norm = register_module("norm", std::make_shared<RMSNorm>(c.hidden_size, c.rms_norm_eps, o.dtype,
                                                             NormWeight::kOnePlusInFloat32));
    normalizer_ = std::sqrt(static_cast<double>(c.hidden_size));
  }

  at::Tensor forward(const CausalLMInputs& inputs, std::vector<at::Tensor>* hidden_states) {
    at::Tensor h = embed_tokens->forward(inputs.input_ids);
    // Scaled by sqrt(hidden_size), rounded to the model's dtype first (as transformers).
    h = h * at::scalar_tensor(normalizer_, h.options());
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
      h = layers->ptr<Gemma2DecoderLayer>(i)->forward(
          {h, cos, sin, windows_[i] > 0 ? windowed : full}, inputs.cache);
    }
    if (inputs.cache) inputs.cache->length += t;
    h = norm->forward(h);
    if (hidden_states) hidden_states->push_back(h);
    return h;
  }

  std::shared_ptr<Embedding> embed_tokens;
  torch::nn::ModuleList layers;  // Gemma2DecoderLayer each
  std::shared_ptr<RMSNorm> norm;

 private:
  std::vector<int64_t> windows_;  // per layer: the window, or 0 (full attention)
  double normalizer_;
  RotaryEmbedding rotary_;
};

class Gemma2ForCausalLM : public CausalLM {
 public:
  Gemma2ForCausalLM(const ModelConfig& c, const ModelOptions& o)
      : CausalLM("Gemma2ForCausalLM", c, o),
        final_softcap_(ConfigNumber(c, "final_logit_softcapping", 0.0)) {
    model = register_module("model", std::make_shared<Gemma2Model>(c, o));
    lm_head = register_module(
        "lm_head", std::make_shared<Linear>(
                       LinearOptions(c.hidden_size, c.vocab_size).bias(false).dtype(o.dtype)));
  }

  CausalLMOutput Forward(const CausalLMInputs& inputs) override {
    CausalLMOutput out;
    at::Tensor h =
        model->forward(inputs, inputs.output_hidden_states ? &out.hidden_states : nullptr);
    out.logits = lm_head->forward(h);
    // final_logit_softcapping: cap * tanh(logits / cap).
    if (final_softcap_ > 0) out.logits = at::tanh(out.logits / final_softcap_) * final_softcap_;
    if (inputs.labels.defined()) out.loss = loss_function(out.logits, inputs.labels);
    return out;
  }

  std::shared_ptr<Gemma2Model> model;
  std::shared_ptr<Linear> lm_head;

 private:
  double final_softcap_;  // 0: none
};

const bool kRegistered = RegisterArchitecture(
    "Gemma2ForCausalLM",
    [](const ModelConfig& c, const ModelOptions& o) -> std::shared_ptr<CausalLM> {
      return std::make_shared<Gemma2ForCausalLM>(c, o);
    });

}  // namespace
}  // namespace weft
