#include "models/layers.h"

#include <ATen/core/grad_mode.h>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>

#include "models/deferred_weight_grads.h"

namespace weft {
namespace {

at::TensorOptions Meta(at::ScalarType dtype) {
  return at::TensorOptions().dtype(dtype).device(at::kMeta);
}

}  // namespace

Linear::Linear(const LinearOptions& o) : Module("Linear") {
  weight =
      register_parameter("weight", at::empty({o.out_features(), o.in_features()}, Meta(o.dtype())));
  if (o.bias()) bias = register_parameter("bias", at::empty({o.out_features()}, Meta(o.dtype())));
}

void Linear::OnParametersReplaced() {
  weight = named_parameters(/*recurse=*/false)["weight"];
  if (bias.defined()) bias = named_parameters(/*recurse=*/false)["bias"];
}

at::Tensor Linear::forward(const at::Tensor& x) {
  return Hooked({x}, [this](const Tensors& in) {
    // Zero-bubble pipeline schedules defer the weight gradient (W).
    at::Tensor y;
    if (DeferWeightGrads::recording() && at::GradMode::is_enabled() && weight.requires_grad()) {
      y = DeferrableLinear(in[0], weight, bias);
    } else {
      y = at::linear(in[0], weight, bias);
    }
    if (lora_A) {
      at::Tensor h = in[0];
      if (lora_dropout > 0 && is_training()) h = at::dropout(h, lora_dropout, /*train=*/true);
      y = y + lora_B->forward(lora_A->forward(h)) * lora_scale;
    }
    return y;
  });
}

Embedding::Embedding(int64_t num_embeddings, int64_t embedding_dim, at::ScalarType dtype)
    : Module("Embedding") {
  weight = register_parameter("weight", at::empty({num_embeddings, embedding_dim}, Meta(dtype)));
}

void Embedding::OnParametersReplaced() { weight = named_parameters(/*recurse=*/false)["weight"]; }

at::Tensor Embedding::forward(const at::Tensor& ids) {
  return Hooked({ids}, [this](const Tensors& in) { return at::embedding(weight, in[0]); });
}

RMSNorm::RMSNorm(int64_t dim, double eps_in, at::ScalarType dtype, NormWeight how_in)
    : Module(how_in == NormWeight::kOnePlusInFloat32 ? "GemmaRMSNorm" : "RMSNorm"),
      eps(eps_in),
      how(how_in) {
  weight = register_parameter("weight", at::empty({dim}, Meta(dtype)));
}

void RMSNorm::OnParametersReplaced() { weight = named_parameters(/*recurse=*/false)["weight"]; }

at::Tensor RMSNorm::forward(const at::Tensor& x) {
  return Hooked({x}, [this](const Tensors& in) {
    at::Tensor h = in[0].to(at::kFloat);
    at::Tensor variance = h.pow(2).mean(-1, /*keepdim=*/true);
    h = h * at::rsqrt(variance + eps);
    switch (how) {
      case NormWeight::kInFloat32:
        return (weight.to(at::kFloat) * h).to(in[0].scalar_type());
      case NormWeight::kOnePlusInFloat32:
        return (h * (1.0 + weight.to(at::kFloat))).to(in[0].scalar_type());
      case NormWeight::kAfterCast:
        break;
    }
    return weight * h.to(in[0].scalar_type());
  });
}

MoeExperts::MoeExperts(const MoeExpertsOptions& options) : Module("MoeExperts"), options_(options) {
  const int64_t e = options.num_experts(), h = options.hidden_size(),
                i = options.intermediate_size();
  gate_up_proj =
      register_parameter("gate_up_proj", at::empty({e, 2 * i, h}, Meta(options.dtype())));
  down_proj = register_parameter("down_proj", at::empty({e, h, i}, Meta(options.dtype())));
}

void MoeExperts::OnParametersReplaced() {
  auto params = named_parameters(/*recurse=*/false);
  gate_up_proj = params["gate_up_proj"];
  down_proj = params["down_proj"];
}

at::Tensor MoeExperts::forward(const at::Tensor& x, const at::Tensor& top_k_index,
                               const at::Tensor& top_k_weights) {
  return Hooked({x, top_k_index, top_k_weights}, [this](const Tensors& in) {
    const at::Tensor &hidden = in[0], &index = in[1], &weights = in[2];
    const int64_t experts = gate_up_proj.size(0);
    // Local shapes: under tensor parallelism each rank holds a slice of the
    // intermediate dim (gate | up halves and down's columns).
    auto expert = [&](const at::Tensor& rows, int64_t e) {
      std::vector<at::Tensor> gate_up = at::matmul(rows, gate_up_proj[e].t()).chunk(2, -1);
      return at::matmul(Activation(options_.act(), gate_up[0]) * gate_up[1], down_proj[e].t());
    };
    at::Tensor out = at::zeros_like(hidden);
    if (!options_.batched()) {  // transformers' loop, expert by expert
      for (int64_t e = 0; e < experts; ++e) {
        at::Tensor where = (index == e).nonzero();  // [hits, 2]: token, slot
        if (where.size(0) == 0) continue;
        at::Tensor token = where.select(1, 0), slot = where.select(1, 1);
        at::Tensor y =
            expert(hidden.index_select(0, token), e) * weights.index({token, slot}).unsqueeze(-1);
        out.index_add_(0, token, y.to(out.scalar_type()));
      }
      return out;
    }
    // Batched: the (token, expert) pairs grouped by expert, one matrix
    // product per projection for all experts at once.
    const ExpertGroups groups = ExpertGroups::Of(index, experts);
    std::vector<at::Tensor> gate_up =
        at::matmul(groups.Gather(hidden), gate_up_proj.transpose(1, 2)).chunk(2, -1);
    at::Tensor y = at::matmul(Activation(options_.act(), gate_up[0]) * gate_up[1],
                              down_proj.transpose(1, 2));  // [E, C, H]
    return groups.Combine(y, weights, hidden);
  });
}

ExpertGroups ExpertGroups::Of(const at::Tensor& top_k_index, int64_t experts) {
  ExpertGroups g;
  g.experts = experts;
  g.k = top_k_index.size(-1);
  const at::Tensor flat = top_k_index.reshape({-1});
  g.order = at::argsort(flat, /*stable=*/true);
  g.expert = flat.index_select(0, g.order);
  const at::Tensor counts = at::bincount(flat, /*weights=*/{}, experts);
  g.capacity = flat.numel() == 0 ? 0 : counts.max().item<int64_t>();
  const at::Tensor starts = counts.cumsum(0) - counts;
  g.position = at::arange(flat.numel(), flat.options()) - starts.index_select(0, g.expert);
  g.token = g.order.div(g.k, "floor");
  return g;
}

at::Tensor ExpertGroups::Gather(const at::Tensor& x) const {
  at::Tensor grouped = at::zeros({experts, capacity, x.size(1)}, x.options());
  return grouped.index_put({expert, position}, x.index_select(0, token));
}

at::Tensor ExpertGroups::Combine(const at::Tensor& y, const at::Tensor& top_k_weights,
                                 const at::Tensor& like) const {
  at::Tensor rows = y.index({expert, position}) *
                    top_k_weights.reshape({-1}).index_select(0, order).unsqueeze(-1);
  at::Tensor out = at::zeros({like.size(0), y.size(-1)}, like.options());
  return out.index_add(0, token, rows.to(like.scalar_type()));
}

at::Tensor Activation(const std::string& name, const at::Tensor& x) {
  if (name == "silu") return at::silu(x);
  if (name == "gelu") return at::gelu(x);
  if (name == "gelu_pytorch_tanh") return at::gelu(x, "tanh");
  if (name == "relu") return at::relu(x);
  TORCH_CHECK(false, "unknown activation '", name, "'");
}

RotaryEmbedding::RotaryEmbedding(const ModelConfig& config) : config_(config) {
  const int64_t dim = config.head_dim;
  const double base = config.rope_theta;
  at::Tensor exponents = at::arange(0, dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(dim);
  at::Tensor inv_freq = 1.0 / at::pow(base, exponents);
  const RopeScaling& rs = config.rope_scaling;
  if (rs.type == "linear") {
    inv_freq = inv_freq / rs.factor;
  } else if (rs.type == "llama3") {
    const double old_context = static_cast<double>(rs.original_max_position_embeddings);
    const double low_wavelen = old_context / rs.low_freq_factor;
    const double high_wavelen = old_context / rs.high_freq_factor;
    at::Tensor wavelen = 2 * M_PI / inv_freq;
    at::Tensor scaled = at::where(wavelen > low_wavelen, inv_freq / rs.factor, inv_freq);
    at::Tensor smooth =
        (old_context / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
    at::Tensor smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled;
    at::Tensor medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
    inv_freq = at::where(medium, smoothed, scaled);
  } else if (rs.type == "yarn") {
    const double original = rs.original_max_position_embeddings > 0
                                ? static_cast<double>(rs.original_max_position_embeddings)
                                : static_cast<double>(config.max_position_embeddings);
    auto correction_dim = [&](double rotations) {
      return (dim * std::log(original / (rotations * 2 * M_PI))) / (2 * std::log(base));
    };
    double low = correction_dim(rs.beta_fast), high = correction_dim(rs.beta_slow);
    if (rs.truncate) {
      low = std::floor(low);
      high = std::ceil(high);
    }
    low = std::max(low, 0.0);
    high = std::min(high, static_cast<double>(dim - 1));
    if (low == high) high += 0.001;
    at::Tensor ramp = ((at::arange(dim / 2, at::kFloat) - low) / (high - low)).clamp(0, 1);
    at::Tensor extrapolation_factor = 1 - ramp;
    at::Tensor pos_freqs = at::pow(base, exponents);
    inv_freq = (1.0 / (rs.factor * pos_freqs)) * (1 - extrapolation_factor) +
               (1.0 / pos_freqs) * extrapolation_factor;
    attention_scaling_ =
        rs.attention_factor.value_or(rs.factor > 1 ? 0.1 * std::log(rs.factor) + 1.0 : 1.0);
  }
  inv_freq_ = inv_freq;
}

std::pair<at::Tensor, at::Tensor> RotaryEmbedding::CosSin(const at::Tensor& position_ids,
                                                          at::ScalarType dtype) {
  at::Tensor inv_freq = inv_freq_;
  if (config_.rope_scaling.type == "dynamic") {
    // NTK-aware: grow the base once the sequence passes the trained length.
    int64_t seq_len = position_ids.max().item<int64_t>() + 1;
    int64_t max_pos = config_.max_position_embeddings;
    if (seq_len > max_pos) {
      const double factor = config_.rope_scaling.factor;
      const int64_t dim = config_.head_dim;
      double base = config_.rope_theta * std::pow(factor * seq_len / max_pos - (factor - 1),
                                                  static_cast<double>(dim) / (dim - 2));
      inv_freq = 1.0 / at::pow(base, at::arange(0, dim, 2, at::kLong).to(at::kFloat) / dim);
    }
  }
  inv_freq = inv_freq.to(position_ids.device());
  // [B, T, D/2] in float32, as transformers computes it (autocast off).
  at::Tensor freqs = position_ids.to(at::kFloat).unsqueeze(-1) * inv_freq.view({1, 1, -1});
  at::Tensor emb = at::cat({freqs, freqs}, -1);
  return {(emb.cos() * attention_scaling_).to(dtype), (emb.sin() * attention_scaling_).to(dtype)};
}

at::Tensor RotaryEmbedding::Apply(const at::Tensor& x, const at::Tensor& cos,
                                  const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  at::Tensor rotated = at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1);
}

}  // namespace weft
