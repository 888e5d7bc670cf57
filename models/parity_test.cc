// Parity with transformers on tests/data/hf (reference outputs computed by
// the real transformers modeling code; see tests/data/hf/README.md).
// Tolerances: fp32 logits and hidden states 1e-4 absolute; loss 1e-5;
// gradients 1e-4 absolute + 1e-3 relative.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include <filesystem>

#include "checkpoint/safetensors.h"
#include "gtest/gtest.h"
#include "models/attention.h"
#include "models/generate.h"
#include "models/pretrained.h"

namespace weft {
namespace {

// PretrainedOptions by member assignment (C++17: no designated initialisers).
PretrainedOptions Options(at::ScalarType dtype, const std::string& attn) {
  PretrainedOptions options;
  options.dtype = dtype;
  options.attn_implementation = attn;
  return options;
}

struct Reference {
  std::shared_ptr<SafetensorsFile> file;
  at::Tensor Get(const std::string& name) const { return file->Get(name).clone(); }
};

Reference LoadReference(const std::string& fixture) {
  auto file = SafetensorsFile::Open("tests/data/hf/" + fixture + "/reference.safetensors");
  EXPECT_TRUE(file.ok()) << file.status();
  return {*file};
}

double MaxDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

class Parity : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(Parity, LogitsHiddenStatesLossAndGradients) {
  const auto& [fixture, attn] = GetParam();
  PretrainedOptions options;
  options.dtype = at::kFloat;
  options.attn_implementation = attn;
  auto model = FromPretrained("tests/data/hf/" + fixture, options);
  ASSERT_TRUE(model.ok()) << model.status();
  Reference ref = LoadReference(fixture);

  CausalLMInputs inputs;
  inputs.input_ids = ref.Get("input_ids");
  inputs.labels = inputs.input_ids;
  inputs.output_hidden_states = true;
  CausalLMOutput out = (*model)->Forward(inputs);

  EXPECT_LT(MaxDiff(out.logits, ref.Get("logits")), 1e-4);
  ASSERT_EQ(out.hidden_states.size(), 3u);
  for (size_t i = 0; i < out.hidden_states.size(); ++i) {
    EXPECT_LT(MaxDiff(out.hidden_states[i], ref.Get("hidden_states_" + std::to_string(i))), 1e-4)
        << "hidden_states_" << i;
  }
  EXPECT_LT(MaxDiff(out.loss, ref.Get("loss")), 1e-5) << out.loss.item<float>();

  out.loss.backward();
  int checked = 0;
  for (const auto& item : (*model)->named_parameters()) {
    at::Tensor want = ref.Get("grad." + item.key());
    ASSERT_TRUE(item.value().grad().defined()) << item.key();
    EXPECT_TRUE(at::allclose(item.value().grad(), want, 1e-3, 1e-4))
        << item.key() << " max diff " << MaxDiff(item.value().grad(), want);
    ++checked;
  }
  EXPECT_EQ(checked, fixture == "qwen2" ? 27 : 21);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Parity,
                         ::testing::Combine(::testing::Values("llama", "llama-sharded",
                                                              "llama-bf16", "mistral", "qwen2"),
                                            ::testing::Values("eager", "sdpa")),
                         [](const auto& info) {
                           std::string name =
                               std::get<0>(info.param) + "_" + std::get<1>(info.param);
                           for (char& c : name)
                             if (c == '-') c = '_';
                           return name;
                         });

TEST(FromPretrained, ErrorsNameTheProblem) {
  auto unknown = FromPretrained("tests/data/hf/llama", Options(at::kFloat, "flash"));
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().message(),
            "attention implementation 'flash' is not registered (expected one of: eager, sdpa)");
  auto missing = FromPretrained("tests/data/hf/nope");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().message(),
            "tests/data/hf/nope/config.json: cannot read (expected a config.json)");
  auto file = FromPretrained("tests/data/hf/llama/config.json");  // was config.json/config.json
  EXPECT_EQ(file.status().message(),
            "tests/data/hf/llama/config.json is a file (expected a Hugging Face checkpoint "
            "directory holding config.json)");
}

// An integer tensor never loads into a float parameter (it became zeros).
TEST(FromPretrained, IntegerTensorForAFloatParameterIsAnError) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string dir = std::string(tmp ? tmp : "/tmp") + "/llama_int_up_proj";
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file("tests/data/hf/llama/config.json", dir + "/config.json",
                             std::filesystem::copy_options::overwrite_existing);
  auto source = SafetensorsFile::Open("tests/data/hf/llama/model.safetensors");
  ASSERT_TRUE(source.ok()) << source.status();
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const TensorEntry& e : (*source)->tensors()) {
    at::Tensor t = (*source)->Get(e);
    if (e.name == "model.layers.0.mlp.up_proj.weight") t = t.to(at::kInt);
    tensors.emplace_back(e.name, t);
  }
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors", tensors).ok());
  auto model = FromPretrained(dir);
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().message(),
            dir +
                ": tensor 'model.layers.0.mlp.up_proj.weight' is I32 in the checkpoint (expected "
                "a floating-point dtype for a parameter of LlamaForCausalLM)");
}

}  // namespace
}  // namespace weft

namespace weft {
namespace {

TEST(Hooks, SeeAndReplaceInputsAndOutputs) {
  auto model = FromPretrained("tests/data/hf/llama", Options(at::kFloat, "eager"));
  ASSERT_TRUE(model.ok()) << model.status();
  Reference ref = LoadReference("llama");
  CausalLMInputs inputs;
  inputs.input_ids = ref.Get("input_ids");
  at::Tensor baseline = (*model)->Forward(inputs).logits;

  std::vector<std::string> seen;
  for (auto& [name, module] : NamedWeftModules(**model)) {
    if (name == "model.layers.1.mlp.down_proj") {
      module->AddPreHook([&seen](Module&, Module::Tensors& in) {
        seen.push_back("down_proj input " + std::to_string(in[0].size(2)));
      });
    }
    if (name == "lm_head") {
      module->AddPostHook(
          [](Module&, const Module::Tensors&, at::Tensor& out) { out = out * 0 + 7; });
    }
  }
  at::Tensor hooked = (*model)->Forward(inputs).logits;
  EXPECT_EQ(seen, std::vector<std::string>{"down_proj input 128"});
  EXPECT_TRUE(at::equal(hooked, at::full_like(hooked, 7)));
  for (auto& [name, module] : NamedWeftModules(**model)) module->ClearHooks();
  EXPECT_TRUE(at::equal((*model)->Forward(inputs).logits, baseline));
}

TEST(Masks, PaddingAndSlidingWindow) {
  // Query positions 0..3 over 4 keys, window 2, the first key of batch 1 padded.
  at::Tensor pad = at::tensor({1, 1, 1, 1, 0, 1, 1, 1}, at::kLong).view({2, 4});
  at::Tensor mask = CausalMask(2, 4, 0, pad, at::Tensor(), 2, at::kFloat, at::kCPU);
  at::Tensor keep = (mask == 0).to(at::kLong).squeeze(1);
  at::Tensor want0 =
      at::tensor({1, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1}, at::kLong).view({4, 4});
  EXPECT_TRUE(at::equal(keep[0], want0)) << keep[0];
  at::Tensor want1 = want0.clone();
  want1.select(1, 0).zero_();
  EXPECT_TRUE(at::equal(keep[1], want1)) << keep[1];
}

}  // namespace
}  // namespace weft

namespace weft {
namespace {

class Generation : public ::testing::TestWithParam<std::string> {};

// Greedy generation with the KV cache reproduces transformers' generate().
TEST_P(Generation, GreedyMatchesTransformers) {
  const std::string fixture = GetParam();
  auto model = FromPretrained("tests/data/hf/" + fixture, Options(at::kFloat, "sdpa"));
  ASSERT_TRUE(model.ok()) << model.status();
  Reference ref = LoadReference(fixture);
  at::Tensor want = ref.Get("generated_ids");
  GenerateOptions options;
  options.max_new_tokens = 8;
  at::Tensor got = Generate(**model, want.narrow(1, 0, 8), options);
  EXPECT_TRUE(at::equal(got, want)) << got << want;
  // The cache changes nothing: a full re-forward gives the same last logits.
  KVCache cache;
  CausalLMInputs step;
  step.input_ids = want.narrow(1, 0, 12);
  step.cache = &cache;
  (*model)->Forward(step);
  step.input_ids = want.narrow(1, 12, 4);
  at::Tensor cached = (*model)->Forward(step).logits;
  CausalLMInputs full;
  full.input_ids = want;
  at::Tensor uncached = (*model)->Forward(full).logits.narrow(1, 12, 4);
  EXPECT_LT(MaxDiff(cached, uncached), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Generation,
                         ::testing::Values("llama", "mistral", "qwen2", "llama-bf16"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name)
                             if (c == '-') c = '_';
                           return name;
                         });

TEST(Sampling, TopKTopPAndSeeds) {
  at::Tensor logits = at::tensor({0.0f, 1.0f, 2.0f, 3.0f, 4.0f}).view({1, 5});
  GenerateOptions o;
  o.greedy = false;
  o.top_k = 2;
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(1);
  for (int i = 0; i < 50; ++i) {
    int64_t t = ChooseNextTokens(logits, o, g).item<int64_t>();
    EXPECT_TRUE(t == 3 || t == 4) << t;
  }
  o.top_k = 0;
  o.top_p = 0.5;  // p(4) = 0.64 alone reaches 0.5
  for (int i = 0; i < 20; ++i) EXPECT_EQ(ChooseNextTokens(logits, o, g).item<int64_t>(), 4);
  o.top_p = 1.0;
  at::Generator a = at::make_generator<at::CPUGeneratorImpl>(7);
  at::Generator b = at::make_generator<at::CPUGeneratorImpl>(7);
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(ChooseNextTokens(logits, o, a).item<int64_t>(),
              ChooseNextTokens(logits, o, b).item<int64_t>());
  }
}

}  // namespace
}  // namespace weft

namespace weft {
namespace {

TEST(Bfloat16, ComputeStaysCloseToTransformersBf16) {
  auto model = FromPretrained("tests/data/hf/llama-bf16", Options(at::kBFloat16, "eager"));
  ASSERT_TRUE(model.ok()) << model.status();
  Reference ref = LoadReference("llama-bf16");
  CausalLMInputs inputs;
  inputs.input_ids = ref.Get("input_ids");
  at::NoGradGuard no_grad;
  at::Tensor logits = (*model)->Forward(inputs).logits;
  EXPECT_EQ(logits.scalar_type(), at::kBFloat16);
  // transformers' bf16 run (torch 1.13) differs from its fp32 run by 0.182.
  EXPECT_LT(MaxDiff(logits, ref.Get("logits_bf16_compute")), 0.1);
  EXPECT_LT(MaxDiff(logits, ref.Get("logits")), 0.25);
}

TEST(AttentionRegistry, UsersRegisterTheirOwn) {
  int calls = 0;
  RegisterAttention("counting",
                    [&calls](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& mask, double scaling) {
                      ++calls;
                      return GetAttention("eager")(q, k, v, mask, scaling);
                    });
  auto model = FromPretrained("tests/data/hf/llama", Options(at::kFloat, "counting"));
  ASSERT_TRUE(model.ok()) << model.status();
  Reference ref = LoadReference("llama");
  CausalLMInputs inputs;
  inputs.input_ids = ref.Get("input_ids");
  EXPECT_LT(MaxDiff((*model)->Forward(inputs).logits, ref.Get("logits")), 1e-4);
  EXPECT_EQ(calls, 2);  // one per layer
}

TEST(Architectures, UnknownOneIsNamed) {
  auto config = ParseModelConfig(R"({"architectures": ["GPT2LMHeadModel"], "hidden_size": 8,
      "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 8})");
  ASSERT_TRUE(config.ok());
  auto model = CreateCausalLM(*config, {});
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().message(),
            "config.json: architectures[0] is \"GPT2LMHeadModel\" (expected one of: "
            "Gemma2ForCausalLM, Gemma3ForCausalLM, GptOssForCausalLM, GraniteForCausalLM, "
            "LlamaForCausalLM, "
            "MistralForCausalLM, MixtralForCausalLM, Olmo2ForCausalLM, Phi3ForCausalLM, "
            "Qwen2ForCausalLM, Qwen3ForCausalLM, Qwen3MoeForCausalLM, SmolLM3ForCausalLM)");
}

}  // namespace
}  // namespace weft
