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

class Generated : public ::testing::TestWithParam<std::string> {};

TEST_P(Generated, MatchesTransformers) {
  const std::string dir = "tests/data/gen/" + GetParam();
  auto model = FromPretrained(dir, {at::kFloat, c10::Device(c10::kCPU), "eager"});
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
  for (const auto& item : (*model)->named_parameters()) {
    const TensorEntry* want = (*ref)->Find("grad." + item.key());
    if (want == nullptr) continue;  // tied: transformers reports the shared one once
    ASSERT_TRUE(item.value().grad().defined()) << item.key();
    EXPECT_TRUE(at::allclose(item.value().grad(), (*ref)->Get(*want), 1e-3, 1e-4))
        << item.key() << " max diff " << MaxDiff(item.value().grad(), (*ref)->Get(*want));
  }
  at::Tensor generated = get("generated_ids");
  GenerateOptions options;
  options.max_new_tokens = 8;
  options.eos_token_id = -1;  // transformers ran without eos
  EXPECT_TRUE(at::equal(Generate(**model, generated.narrow(1, 0, 8), options), generated));
}

INSTANTIATE_TEST_SUITE_P(Cases, Generated,
                         ::testing::Values("llama-padded", "llama-tied", "llama-rope-linear",
                                           "llama-rope-dynamic", "llama-rope-llama3",
                                           "llama-rope-yarn", "mistral-window"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name)
                             if (c == '-') c = '_';
                           return name;
                         });

}  // namespace
}  // namespace weft
