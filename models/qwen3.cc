// Qwen3 (Qwen3 2 and 3): Qwen3ForCausalLM with transformers' module names.
//
// model.embed_tokens -> model.layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj,
// post_attention_layernorm, mlp.{gate,up,down}_proj} -> model.norm -> lm_head.
// The whole forward is in this file, top to bottom.
#include <ATen/ATen.h>
#include <torch/nn/modules/container/modulelist.h>

#include "models/attention.h"
#include "models/causal_lm.h"
#include "models/layers.h"

namespace weft {
namespace {

class Qwen3Attention : public Module {
 public:
  Qwen3Attention(const ModelConfig& c, const ModelOptions& o, int64_t layer)
      : Module("Qwen3Attention"),
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

// Copied from models/llama.cc LlamaMLP with Llama->Qwen3
class Qwen3MLP : public Module {
 public:
  Qwen3MLP(const ModelConfig& c, const ModelOptions& o) : Module("Qwen3MLP"), act_(c.hidden_act) {
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

// Copied from models/llama.cc LlamaDecoderLayer with Llama->Qwen3
class Qwen3DecoderLayer : public Module {
 public:
  Qwen3DecoderLayer(const ModelConfig& c, const ModelOptions& o, int64_t layer)
      : Module("Qwen3DecoderLayer") {
    self_attn = register_module("self_attn", std::make_shared<Qwen3Attention>(c, o, layer));
    mlp = register_module("mlp", std::make_shared<Qwen3MLP>(c, o));
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

  std::shared_ptr<Qwen3Attention> self_attn;
  std::shared_ptr<Qwen3MLP> mlp;
  std::shared_ptr<RMSNorm> input_layernorm, post_attention_layernorm;
};

class Qwen3Model : public Module {
 public:
  Qwen3Model(const ModelConfig& c, const ModelOptions& o) : Module("Qwen3Model"), rotary_(c) {
    TORCH_CHECK(!c.sliding_window.has_value(), "config.json: use_sliding_window is true with ",
                "sliding_window ", c.sliding_window.value_or(0),
                " (expected false: Qwen3 sliding-window layers are not supported yet)");
    embed_tokens = register_module(
        "embed_tokens", std::make_shared<Embedding>(c.vocab_size, c.hidden_size, o.dtype));
    layers = register_module("layers", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      layers->push_back(std::make_shared<Qwen3DecoderLayer>(c, o, i));
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
      h = layer->as<Qwen3DecoderLayer>()->forward({h, cos, sin, mask}, inputs.cache);
    }
    if (inputs.cache) inputs.cache->length += t;
    h = norm->forward(h);
    if (hidden_states) hidden_states->push_back(h);
    return h;
  }

  std::shared_ptr<Embedding> embed_tokens;
  torch::nn::ModuleList layers;  // Qwen3DecoderLayer each
  std::shared_ptr<RMSNorm> norm;

 private:
  RotaryEmbedding rotary_;
};

// Copied from models/llama.cc LlamaForCausalLM with Llama->Qwen3
class Qwen3ForCausalLM : public CausalLM {
 public:
  Qwen3ForCausalLM(const ModelConfig& c, const ModelOptions& o)
      : CausalLM("Qwen3ForCausalLM", c, o) {
    model = register_module("model", std::make_shared<Qwen3Model>(c, o));
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

  std::shared_ptr<Qwen3Model> model;
  std::shared_ptr<Linear> lm_head;
};

const bool kRegistered = RegisterArchitecture(
    "Qwen3ForCausalLM",
    [](const ModelConfig& c, const ModelOptions& o) -> std::shared_ptr<CausalLM> {
      return std::make_shared<Qwen3ForCausalLM>(c, o);
    });

}  // namespace
}  // namespace weft
