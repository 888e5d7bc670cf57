// Text generation with a KV cache: greedy, or sampled with temperature,
// top-k and top-p (applied in that order, as transformers does).
//
//   GenerateOptions options;
//   options.max_new_tokens = 8;
//   at::Tensor ids = Generate(*model, prompt, options);  // prompt + new tokens
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

#include "models/causal_lm.h"

namespace weft {

struct GenerateOptions {
  int64_t max_new_tokens = 16;
  bool greedy = true;
  double temperature = 1.0;
  int64_t top_k = 0;   // 0: off
  double top_p = 1.0;  // 1: off
  uint64_t seed = 0;
  /// Stop once every sequence has produced it; default: config.json's.
  std::optional<int64_t> eos_token_id;
};

/// `prompt` is int64 [B, T]; returns [B, T + n] with n <= max_new_tokens
/// (sequences that finished early are padded with the eos id).
at::Tensor Generate(CausalLM& model, const at::Tensor& prompt, const GenerateOptions& options);

/// The next-token choice from last-position logits [B, V] (exposed for tests).
at::Tensor ChooseNextTokens(const at::Tensor& logits, const GenerateOptions& options,
                            at::Generator& generator);

}  // namespace weft
