// Parity with transformers on tests/data/gen (tools/make_test_data.py):
// rope scaling types, padding masks, tied embeddings, sliding windows and the
// architectures the shared fixtures lack. Same tolerances as parity_test.
#include <ATen/ATen.h>

#include "checkpoint/safetensors.h"
#include "gtest/gtest.h"
#include "models/generate.h"
#include "models/pretrained.h"

namespace weft {
namespace {

double MaxDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

// The reference gradient of `name` (transformers' in-memory names, which
// weft's are), or undefined when transformers reports a tied one once.
at::Tensor ReferenceGrad(const SafetensorsFile& ref, const std::string& name) {
  const TensorEntry* direct = ref.Find("grad." + name);
  return direct == nullptr ? at::Tensor() : ref.Get(*direct);
}

class Generated : public ::testing::TestWithParam<std::string> {};

TEST_P(Generated, MatchesTransformers) {
  const std::string dir = "tests/data/gen/" + GetParam();
  PretrainedOptions pretrained;
  pretrained.dtype = at::kFloat;
  pretrained.attn_implementation = "eager";
  auto model = FromPretrained(dir, pretrained);
  ASSERT_TRUE(model.ok()) << model.status();
  auto ref = SafetensorsFile::Open(dir + "/reference.safetensors");
  ASSERT_TRUE(ref.ok()) << ref.status();
  auto get = [&](const std::string& name) { return (*ref)->Get(name).clone(); };

  CausalLMInputs inputs;
  inputs.input_ids = get("input_ids");
  inputs.attention_mask = get("attention_mask");
  inputs.labels = inputs.input_ids.masked_fill(inputs.attention_mask == 0, -100);
  inputs.output_hidden_states = true;
  CausalLMOutput out = (*model)->Forward(inputs);
  EXPECT_LT(MaxDiff(out.logits, get("logits")), 1e-4);
  for (size_t i = 0; i < out.hidden_states.size(); ++i) {
    EXPECT_LT(MaxDiff(out.hidden_states[i], get("hidden_states_" + std::to_string(i))), 1e-4)
        << "hidden_states_" << i;
  }
  EXPECT_NE((*ref)->Find("hidden_states_" + std::to_string(out.hidden_states.size() - 1)), nullptr);
  EXPECT_EQ((*ref)->Find("hidden_states_" + std::to_string(out.hidden_states.size())), nullptr);
  EXPECT_LT(MaxDiff(out.loss, get("loss")), 1e-5);
  out.loss.backward();
  int checked = 0;
  for (const auto& item : (*model)->named_parameters()) {
    ASSERT_TRUE(item.value().grad().defined()) << item.key();
    at::Tensor want = ReferenceGrad(**ref, item.key());
    if (!want.defined()) continue;  // tied: transformers reports the shared one once
    EXPECT_TRUE(at::allclose(item.value().grad(), want, 1e-3, 1e-4))
        << item.key() << " max diff " << MaxDiff(item.value().grad(), want);
    ++checked;
  }
  EXPECT_GT(checked, 0);
  at::Tensor generated = get("generated_ids");
  GenerateOptions options;
  options.max_new_tokens = 8;
  options.eos_token_id = -1;  // transformers ran without eos
  EXPECT_TRUE(at::equal(Generate(**model, generated.narrow(1, 0, 8), options), generated));
  // The KV cache changes nothing: 12 tokens cached, then 4 more (past every
  // sliding window), give the logits a full re-forward gives.
  KVCache cache;
  CausalLMInputs step;
  step.input_ids = generated.narrow(1, 0, 12);
  step.cache = &cache;
  (*model)->Forward(step);
  step.input_ids = generated.narrow(1, 12, 4);
  at::Tensor cached = (*model)->Forward(step).logits;
  CausalLMInputs full;
  full.input_ids = generated;
  EXPECT_LT(MaxDiff(cached, (*model)->Forward(full).logits.narrow(1, 12, 4)), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Cases, Generated,
                         ::testing::Values("llama-padded", "llama-tied", "llama-rope-linear",
                                           "llama-rope-dynamic", "llama-rope-llama3",
                                           "llama-rope-yarn", "mistral-window", "qwen2-window",
                                           "qwen3", "phi3", "mixtral", "granite", "smollm3",
                                           "olmo2", "gemma2", "gemma3", "qwen3-moe", "gpt-oss"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name)
                             if (c == '-') c = '_';
                           return name;
                         });

}  // namespace
}  // namespace weft
