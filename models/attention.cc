#include "models/attention.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <map>
#include <mutex>

#include "absl/strings/str_join.h"

namespace weft {
namespace {

at::Tensor RepeatKv(const at::Tensor& x, int64_t groups) {
  if (groups == 1) return x;
  const int64_t b = x.size(0), kv = x.size(1), s = x.size(2), d = x.size(3);
  return x.unsqueeze(2).expand({b, kv, groups, s, d}).reshape({b, kv * groups, s, d});
}

at::Tensor Eager(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                 const at::Tensor& mask, double scaling) {
  const int64_t groups = q.size(1) / k.size(1);
  at::Tensor keys = RepeatKv(k, groups);
  at::Tensor values = RepeatKv(v, groups);
  at::Tensor scores = at::matmul(q, keys.transpose(2, 3)) * scaling;
  if (mask.defined()) scores = scores + mask;
  at::Tensor probs = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
  return at::matmul(probs, values);
}

at::Tensor Sdpa(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const at::Tensor& mask, double scaling) {
  const int64_t groups = q.size(1) / k.size(1);
  return at::scaled_dot_product_attention(
      q, RepeatKv(k, groups), RepeatKv(v, groups),
      mask.defined() ? c10::optional<at::Tensor>(mask) : c10::nullopt, 0.0, /*is_causal=*/false,
      scaling);
}

std::map<std::string, AttentionFn>& Registry() {
  static auto* registry = new std::map<std::string, AttentionFn>{{"eager", Eager}, {"sdpa", Sdpa}};
  return *registry;
}

std::mutex& RegistryMutex() {
  static auto* mutex = new std::mutex;
  return *mutex;
}

}  // namespace

void RegisterAttention(const std::string& name, AttentionFn fn) {
  std::lock_guard<std::mutex> lock(RegistryMutex());
  Registry()[name] = std::move(fn);
}

std::vector<std::string> AttentionNames() {
  std::lock_guard<std::mutex> lock(RegistryMutex());
  std::vector<std::string> names;
  for (const auto& [name, fn] : Registry()) names.push_back(name);
  return names;
}

const AttentionFn& GetAttention(const std::string& name) {
  {
    std::lock_guard<std::mutex> lock(RegistryMutex());
    auto it = Registry().find(name);
    if (it != Registry().end()) return it->second;
  }
  TORCH_CHECK(false, "attention implementation '", name,
              "' is not registered (expected one of: ", absl::StrJoin(AttentionNames(), ", "), ")");
}

at::Tensor PackedDocuments(const at::Tensor& position_ids) {
  at::Tensor p = position_ids.to(at::kLong);
  at::Tensor restart = at::ones_like(p, p.options().dtype(at::kBool));
  if (p.size(-1) > 1) {
    restart = at::cat({at::zeros_like(p.narrow(-1, 0, 1), p.options().dtype(at::kBool)),
                       p.narrow(-1, 1, p.size(-1) - 1) != p.narrow(-1, 0, p.size(-1) - 1) + 1},
                      -1);
  } else {
    restart.zero_();
  }
  return restart.to(at::kLong).cumsum(-1);
}

at::Tensor CausalMask(int64_t batch, int64_t queries, int64_t past,
                      const at::Tensor& attention_mask, const at::Tensor& position_ids,
                      int64_t sliding_window, at::ScalarType dtype, at::Device device) {
  const int64_t keys = past + queries;
  auto opts = at::TensorOptions().dtype(at::kLong).device(device);
  at::Tensor q_pos = at::arange(past, past + queries, opts).view({queries, 1});
  at::Tensor k_pos = at::arange(keys, opts).view({1, keys});
  at::Tensor allowed = k_pos <= q_pos;
  if (sliding_window > 0) allowed = allowed.logical_and(k_pos > q_pos - sliding_window);
  allowed = allowed.view({1, 1, queries, keys}).expand({batch, 1, queries, keys});
  if (attention_mask.defined()) {
    TORCH_CHECK(attention_mask.dim() == 2 && attention_mask.size(0) == batch &&
                    attention_mask.size(1) == keys,
                "attention_mask has shape ", attention_mask.sizes(), " (expected [", batch, ", ",
                keys, "])");
    allowed =
        allowed.logical_and(attention_mask.to(device).to(at::kBool).view({batch, 1, 1, keys}));
  } else if (position_ids.defined() && past == 0) {
    TORCH_CHECK(
        position_ids.dim() == 2 && position_ids.size(0) == batch && position_ids.size(1) == queries,
        "position_ids has shape ", position_ids.sizes(), " (expected [", batch, ", ", queries,
        "])");
    at::Tensor docs = PackedDocuments(position_ids).to(device);
    if (docs.select(1, queries - 1).max().item<int64_t>() > 0) {  // some row is packed
      allowed =
          allowed.logical_and(docs.view({batch, 1, queries, 1}) == docs.view({batch, 1, 1, keys}));
    }
  }
  const double lowest = dtype == at::kBFloat16 ? -3.3895313892515355e38
                        : dtype == at::kHalf   ? -65504.0
                        : dtype == at::kDouble ? -1.7976931348623157e308
                                               : -3.4028234663852886e38;
  at::Tensor mask =
      at::zeros({batch, 1, queries, keys}, at::TensorOptions().dtype(dtype).device(device));
  return mask.masked_fill(allowed.logical_not(), lowest);
}

}  // namespace weft
