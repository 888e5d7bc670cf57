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

// transformers 5 keeps Mixtral's experts fused in memory
// (mlp.experts.gate_up_proj [E, 2I, H] = w1 | w3, mlp.experts.down_proj [E, H, I]
// = w2, mlp.gate = block_sparse_moe.gate); checkpoints and weft use the
// per-expert names. Maps a weft name to its reference gradient.
at::Tensor ReferenceGrad(const SafetensorsFile& ref, const std::string& name) {
  if (const TensorEntry* direct = ref.Find("grad." + name)) return ref.Get(*direct);
  static const std::string kMoe = ".block_sparse_moe.";
  size_t at = name.find(kMoe);
  if (at == std::string::npos) return at::Tensor();
  std::string prefix = "grad." + name.substr(0, at) + ".mlp.";
  std::string rest = name.substr(at + kMoe.size());
  if (rest == "gate.weight") return ref.Get(prefix + "gate.weight");
  // rest: "experts.<e>.w<k>.weight"
  size_t dot = rest.find('.', 8);
  int expert = std::stoi(rest.substr(8, dot - 8));
  std::string w = rest.substr(dot + 1, 2);
  if (w == "w2") return ref.Get(prefix + "experts.down_proj")[expert];
  at::Tensor gate_up = ref.Get(prefix + "experts.gate_up_proj")[expert];
  return gate_up.chunk(2, 0)[w == "w1" ? 0 : 1];
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
