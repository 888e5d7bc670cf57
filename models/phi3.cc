// Phi3 (Phi3 2 and 3): Phi3ForCausalLM with transformers' module names.
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

class Phi3Attention : public Module {
 public:
  Phi3Attention(const ModelConfig& c, const ModelOptions& o, int64_t layer)
      : Module("Phi3Attention"),
        layer_(layer),
        heads_(c.num_attention_heads),
        kv_heads_(c.num_key_value_heads),
        head_dim_(c.head_dim),
        attention_(GetAttention(o.attn_implementation)) {
    qkv_proj = register_module(
        "qkv_proj",
        std::make_shared<Linear>(LinearOptions(c.hidden_size, (heads_ + 2 * kv_heads_) * head_dim_)
                                     .bias(false)
                                     .dtype(o.dtype)));
    o_proj = register_module(
        "o_proj", std::make_shared<Linear>(
                      LinearOptions(heads_ * head_dim_, c.hidden_size).bias(false).dtype(o.dtype)));
  }

  at::Tensor forward(const LayerInputs& inputs, KVCache* cache) {
    // By value: activation checkpointing may run the body again in backward.
    return Hooked(inputs.List(), [this, cache](const Tensors& list) {
      const LayerInputs in = LayerInputs::From(list);
      const int64_t b = in.hidden.size(0), t = in.hidden.size(1);
      // Head counts come from the projections' widths, so a sharded
      // projection (fewer local heads) needs no change here: q | k | v along
      // the last dim, q as wide as o_proj's input (the attention output has
      // the queries' heads), k and v splitting the rest.
      at::Tensor qkv = qkv_proj->forward(in.hidden);
      const int64_t q_width = o_proj->weight.size(1);
      const int64_t kv_width = (qkv.size(-1) - q_width) / 2;
      at::Tensor q = qkv.narrow(-1, 0, q_width).view({b, t, -1, head_dim_}).transpose(1, 2);
      at::Tensor k = qkv.narrow(-1, q_width, kv_width).view({b, t, -1, head_dim_}).transpose(1, 2);
      at::Tensor v =
          qkv.narrow(-1, q_width + kv_width, kv_width).view({b, t, -1, head_dim_}).transpose(1, 2);
      q = RotaryEmbedding::Apply(q, in.cos, in.sin);
      k = RotaryEmbedding::Apply(k, in.cos, in.sin);
      if (cache != nullptr) std::tie(k, v) = cache->Update(layer_, k, v);
      at::Tensor out =
          attention_(q, k, v, in.mask, 1.0 / std::sqrt(static_cast<double>(head_dim_)));
      out = out.transpose(1, 2).reshape({b, t, -1});
      return o_proj->forward(out);
    });
  }

  std::shared_ptr<Linear> qkv_proj, o_proj;

 private:
  int64_t layer_;
  int64_t heads_, kv_heads_, head_dim_;
  AttentionFn attention_;  // resolved once, from ModelOptions::attn_implementation
};

class Phi3MLP : public Module {
 public:
  Phi3MLP(const ModelConfig& c, const ModelOptions& o) : Module("Phi3MLP"), act_(c.hidden_act) {
    gate_up_proj = register_module(
        "gate_up_proj",
        std::make_shared<Linear>(
            LinearOptions(c.hidden_size, 2 * c.intermediate_size).bias(false).dtype(o.dtype)));
    down_proj = register_module(
        "down_proj",
        std::make_shared<Linear>(
            LinearOptions(c.intermediate_size, c.hidden_size).bias(false).dtype(o.dtype)));
  }

  at::Tensor forward(const at::Tensor& x) {
    return Hooked({x}, [this](const Tensors& in) {
      std::vector<at::Tensor> gate_up = gate_up_proj->forward(in[0]).chunk(2, -1);
      return down_proj->forward(gate_up[1] * Activation(act_, gate_up[0]));
    });
  }

  std::shared_ptr<Linear> gate_up_proj, down_proj;

 private:
  std::string act_;
};

// Copied from models/llama.cc LlamaDecoderLayer with Llama->Phi3
class Phi3DecoderLayer : public Module {
 public:
  Phi3DecoderLayer(const ModelConfig& c, const ModelOptions& o, int64_t layer)
      : Module("Phi3DecoderLayer") {
    self_attn = register_module("self_attn", std::make_shared<Phi3Attention>(c, o, layer));
    mlp = register_module("mlp", std::make_shared<Phi3MLP>(c, o));
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

  std::shared_ptr<Phi3Attention> self_attn;
  std::shared_ptr<Phi3MLP> mlp;
  std::shared_ptr<RMSNorm> input_layernorm, post_attention_layernorm;
};

// Copied from models/llama.cc LlamaModel with Llama->Phi3
class Phi3Model : public Module {
 public:
  Phi3Model(const ModelConfig& c, const ModelOptions& o) : Module("Phi3Model"), rotary_(c) {
    embed_tokens = register_module(
        "embed_tokens", std::make_shared<Embedding>(c.vocab_size, c.hidden_size, o.dtype));
    layers = register_module("layers", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      layers->push_back(std::make_shared<Phi3DecoderLayer>(c, o, i));
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
      h = layer->as<Phi3DecoderLayer>()->forward({h, cos, sin, mask}, inputs.cache);
    }
    if (inputs.cache) inputs.cache->length += t;
    h = norm->forward(h);
    if (hidden_states) hidden_states->push_back(h);
    return h;
  }

  std::shared_ptr<Embedding> embed_tokens;
  torch::nn::ModuleList layers;  // Phi3DecoderLayer each
  std::shared_ptr<RMSNorm> norm;

 private:
  RotaryEmbedding rotary_;
};

// Copied from models/llama.cc LlamaForCausalLM with Llama->Phi3
class Phi3ForCausalLM : public CausalLM {
 public:
  Phi3ForCausalLM(const ModelConfig& c, const ModelOptions& o) : CausalLM("Phi3ForCausalLM", c, o) {
    model = register_module("model", std::make_shared<Phi3Model>(c, o));
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

  std::shared_ptr<Phi3Model> model;
  std::shared_ptr<Linear> lm_head;
};

const bool kRegistered = RegisterArchitecture(
    "Phi3ForCausalLM",
    [](const ModelConfig& c, const ModelOptions& o) -> std::shared_ptr<CausalLM> {
      return std::make_shared<Phi3ForCausalLM>(c, o);
    });

}  // namespace
}  // namespace weft
