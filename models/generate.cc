#include "models/generate.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

namespace weft {

at::Tensor ChooseNextTokens(const at::Tensor& logits_in, const GenerateOptions& o,
                            at::Generator& generator) {
  if (o.greedy) return logits_in.argmax(-1);
  TORCH_CHECK(o.temperature > 0, "temperature ", o.temperature, " is not positive");
  at::Tensor logits = logits_in.to(at::kFloat) / o.temperature;
  const double lowest = -std::numeric_limits<float>::infinity();
  if (o.top_k > 0 && o.top_k < logits.size(-1)) {
    at::Tensor kth = std::get<0>(logits.topk(o.top_k, -1)).narrow(-1, o.top_k - 1, 1);
    logits = logits.masked_fill(logits < kth, lowest);
  }
  if (o.top_p < 1.0) {
    // Keep the smallest set whose probability reaches top_p (at least one).
    auto [sorted, order] = logits.sort(-1, /*descending=*/false);
    at::Tensor cumulative = sorted.softmax(-1).cumsum(-1);
    at::Tensor drop_sorted = cumulative <= (1 - o.top_p);
    drop_sorted.narrow(-1, drop_sorted.size(-1) - 1, 1).fill_(false);
    at::Tensor drop = drop_sorted.scatter(-1, order, drop_sorted);
    logits = logits.masked_fill(drop, lowest);
  }
  at::Tensor probs = logits.softmax(-1);
  return at::multinomial(probs, 1, /*replacement=*/false, generator).squeeze(-1);
}

at::Tensor Generate(CausalLM& model, const at::Tensor& prompt, const GenerateOptions& o) {
  TORCH_CHECK(prompt.dim() == 2 && prompt.scalar_type() == at::kLong,
              "prompt must be int64 [B, T], got ", prompt.scalar_type(), " ", prompt.sizes());
  at::NoGradGuard no_grad;
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(o.seed);
  // Generation stops at any end-of-sequence id (transformers' eos lists).
  std::vector<int64_t> eos_ids =
      o.eos_token_id ? std::vector<int64_t>{*o.eos_token_id} : model.config.eos_token_ids;
  std::optional<int64_t> eos;
  if (!eos_ids.empty()) eos = eos_ids.front();
  at::Tensor eos_tensor = at::tensor(eos_ids, at::kLong);
  KVCache cache;
  CausalLMInputs inputs;
  inputs.input_ids = prompt;
  inputs.cache = &cache;
  at::Tensor sequence = prompt;
  at::Tensor finished = at::zeros({prompt.size(0)}, at::TensorOptions().dtype(at::kBool));
  for (int64_t step = 0; step < o.max_new_tokens; ++step) {
    at::Tensor logits = model.Forward(inputs).logits.select(1, -1);
    at::Tensor next = ChooseNextTokens(logits.cpu(), o, generator);
    if (eos) next = next.masked_fill(finished, *eos);
    sequence = at::cat({sequence, next.unsqueeze(1).to(sequence.device())}, 1);
    if (eos) {
      finished = finished.logical_or(at::isin(next, eos_tensor));
      if (finished.all().item<bool>()) break;
    }
    inputs.input_ids = next.unsqueeze(1).to(prompt.device());
  }
  return sequence;
}

}  // namespace weft
