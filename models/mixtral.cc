// Mixtral (Mixtral 2 and 3): MixtralForCausalLM with transformers' module names.
//
// model.embed_tokens -> model.layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj,
// post_attention_layernorm, mlp.{gate, experts.{gate_up_proj, down_proj}}} ->
// model.norm -> lm_head, as transformers 5 holds them in memory; checkpoints
// with the original block_sparse_moe names load through the layouts below.
// The whole forward is in this file, top to bottom.
#include <ATen/ATen.h>
#include <torch/nn/modules/container/modulelist.h>

#include "base/json.h"
#include "models/attention.h"
#include "models/causal_lm.h"
#include "models/layers.h"

namespace weft {
namespace {

// Copied from models/llama.cc LlamaAttention with Llama->Mixtral
class MixtralAttention : public Module {
 public:
  MixtralAttention(const ModelConfig& c, const ModelOptions& o, int64_t layer)
      : Module("MixtralAttention"),
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
      at::Tensor out =
          attention_(q, k, v, in.mask, 1.0 / std::sqrt(static_cast<double>(head_dim_)));
      out = out.transpose(1, 2).reshape({b, t, -1});
      return o_proj->forward(out);
    });
  }

  std::shared_ptr<Linear> q_proj, k_proj, v_proj, o_proj;

 private:
  int64_t layer_;
  int64_t heads_, kv_heads_, head_dim_;
  AttentionFn attention_;  // resolved once, from ModelOptions::attn_implementation
};

// The MoE block (transformers 5's layout): mlp.gate, a softmax router whose
// top-k weights are renormalised, over mlp.experts held fused (gate_up_proj =
// each expert's w1 | w3, down_proj = its w2).
class MixtralSparseMoeBlock : public Module {
 public:
  MixtralSparseMoeBlock(const ModelConfig& c, const ModelOptions& o)
      : Module("MixtralSparseMoeBlock") {
    const JsonValue* experts_key = c.json.Find("num_local_experts");
    const JsonValue* top_k_key = c.json.Find("num_experts_per_tok");
    num_experts_ = experts_key && experts_key->AsUint64() ? *experts_key->AsUint64() : 8;
    top_k_ = top_k_key && top_k_key->AsUint64() ? *top_k_key->AsUint64() : 2;
    TORCH_CHECK(top_k_ >= 1 && top_k_ <= num_experts_, "config.json: num_experts_per_tok is ",
                top_k_, " (expected 1..num_local_experts = ", num_experts_, ")");
    gate = register_module(
        "gate", std::make_shared<Linear>(
                    LinearOptions(c.hidden_size, num_experts_).bias(false).dtype(o.dtype)));
    experts = register_module(
        "experts", std::make_shared<MoeExperts>(
                       MoeExpertsOptions(num_experts_, c.hidden_size, c.intermediate_size)
                           .act(c.hidden_act)
                           .dtype(o.dtype)));
  }

  at::Tensor forward(const at::Tensor& x) {
    return Hooked({x}, [this](const Tensors& in) {
      at::Tensor tokens = in[0].reshape({-1, in[0].size(-1)});
      at::Tensor router_logits = gate->forward(tokens);
      at::Tensor probs = at::softmax(router_logits, -1, at::kFloat);
      auto [weights, chosen] = probs.topk(top_k_, -1);
      weights = (weights / weights.sum(-1, /*keepdim=*/true)).to(tokens.scalar_type());
      return experts->forward(tokens, chosen, weights).view(in[0].sizes());
    });
  }

  std::shared_ptr<Linear> gate;
  std::shared_ptr<MoeExperts> experts;

 private:
  int64_t num_experts_;
  int64_t top_k_;
};

class MixtralDecoderLayer : public Module {
 public:
  MixtralDecoderLayer(const ModelConfig& c, const ModelOptions& o, int64_t layer)
      : Module("MixtralDecoderLayer") {
    self_attn = register_module("self_attn", std::make_shared<MixtralAttention>(c, o, layer));
    mlp = register_module("mlp", std::make_shared<MixtralSparseMoeBlock>(c, o));
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

  std::shared_ptr<MixtralAttention> self_attn;
  std::shared_ptr<MixtralSparseMoeBlock> mlp;
  std::shared_ptr<RMSNorm> input_layernorm, post_attention_layernorm;
};

// Copied from models/mistral.cc MistralModel with Mistral->Mixtral
class MixtralModel : public Module {
 public:
  MixtralModel(const ModelConfig& c, const ModelOptions& o)
      : Module("MixtralModel"), rotary_(c), sliding_window_(c.sliding_window.value_or(0)) {
    embed_tokens = register_module(
        "embed_tokens", std::make_shared<Embedding>(c.vocab_size, c.hidden_size, o.dtype));
    layers = register_module("layers", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      layers->push_back(std::make_shared<MixtralDecoderLayer>(c, o, i));
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
                                 sliding_window_, h.scalar_type(), h.device());
    for (const auto& layer : *layers) {
      if (hidden_states) hidden_states->push_back(h);
      h = layer->as<MixtralDecoderLayer>()->forward({h, cos, sin, mask}, inputs.cache);
    }
    if (inputs.cache) inputs.cache->length += t;
    h = norm->forward(h);
    if (hidden_states) hidden_states->push_back(h);
    return h;
  }

  std::shared_ptr<Embedding> embed_tokens;
  torch::nn::ModuleList layers;  // MixtralDecoderLayer each
  std::shared_ptr<RMSNorm> norm;

 private:
  RotaryEmbedding rotary_;
  int64_t sliding_window_;
};

class MixtralForCausalLM : public CausalLM {
 public:
  MixtralForCausalLM(const ModelConfig& c, const ModelOptions& o)
      : CausalLM("MixtralForCausalLM", c, o) {
    model = register_module("model", std::make_shared<MixtralModel>(c, o));
    // Checkpoints keep Mixtral's original names, one tensor per expert
    // (transformers 5 converts them the same way).
    checkpoint_layouts = {
        {"mlp.experts.gate_up_proj",
         {"block_sparse_moe.experts.{e}.w1.weight", "block_sparse_moe.experts.{e}.w3.weight"}},
        {"mlp.experts.down_proj", {"block_sparse_moe.experts.{e}.w2.weight"}},
        {"mlp.gate.weight", {"block_sparse_moe.gate.weight"}}};
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

  std::shared_ptr<MixtralModel> model;
  std::shared_ptr<Linear> lm_head;
};

const bool kRegistered = RegisterArchitecture(
    "MixtralForCausalLM",
    [](const ModelConfig& c, const ModelOptions& o) -> std::shared_ptr<CausalLM> {
      return std::make_shared<MixtralForCausalLM>(c, o);
    });

}  // namespace
}  // namespace weft
