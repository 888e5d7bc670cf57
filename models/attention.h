// The attention registry: attention kernels by name, as transformers'
// attn_implementation. "eager" (matmul + softmax in float32, transformers'
// reference) and "sdpa" (at::scaled_dot_product_attention) are built in;
// RegisterAttention adds others.
//
//   at::Tensor out = GetAttention("sdpa")(q, k, v, mask, scaling);
//   RegisterAttention("mine", [](auto& q, auto& k, auto& v, auto& mask, double s) { ... });
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <string>
#include <vector>

namespace weft {

/// q [B, H, T, D]; k, v [B, KV, S, D] (KV divides H: grouped-query attention);
/// mask: additive float [B, 1, T, S] (0 keeps, -inf-like drops) or undefined.
/// Returns [B, H, T, D].
using AttentionFn =
    std::function<at::Tensor(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& mask, double scaling)>;

void RegisterAttention(const std::string& name, AttentionFn fn);
/// Throws naming the known implementations when `name` is unknown.
const AttentionFn& GetAttention(const std::string& name);
std::vector<std::string> AttentionNames();

/// The additive mask for causal attention of T new queries at positions
/// [past, past + T) over S = past + T keys, with an optional padding mask
/// (`attention_mask` [B, S], 1 keep / 0 pad) and sliding window (a query at
/// position p sees keys in (p - window, p]).
///
/// Packed sequences, as transformers detects them: with `position_ids`
/// [B, T] given and neither an attention_mask nor a cache, a row whose
/// positions restart (position[t] != position[t - 1] + 1) holds several
/// documents, and a query sees only keys of its own document (a
/// block-diagonal causal mask); sliding windows apply within it.
at::Tensor CausalMask(int64_t batch, int64_t queries, int64_t past,
                      const at::Tensor& attention_mask, const at::Tensor& position_ids,
                      int64_t sliding_window, at::ScalarType dtype, at::Device device);

/// The document index of every token of packed rows: 0 from the row's
/// start, +1 wherever positions restart (transformers'
/// find_packed_sequence_indices). [B, T] int64.
at::Tensor PackedDocuments(const at::Tensor& position_ids);

}  // namespace weft
