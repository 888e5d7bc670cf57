// Initialisation from a config: transformers' distributions, deterministic
// per (seed, parameter name), and slices equal slicing the full weights.
#include "models/init.h"

#include <ATen/ATen.h>

#include "gtest/gtest.h"
#include "models/pretrained.h"

namespace weft {
namespace {

std::shared_ptr<CausalLM> MetaModel(const std::string& dir) {
  auto config = LoadModelConfig(dir);
  EXPECT_TRUE(config.ok()) << config.status();
  auto model = CreateCausalLM(*config, ModelOptions{});
  EXPECT_TRUE(model.ok()) << model.status();
  return *model;
}

std::map<std::string, at::Tensor> Params(CausalLM& model) {
  std::map<std::string, at::Tensor> out;
  for (const auto& item : model.named_parameters()) out[item.key()] = item.value();
  return out;
}

TEST(InitializeWeights, TransformersDistributions) {
  auto model = MetaModel("tests/data/hf/llama");
  ASSERT_TRUE(InitializeWeights(*model, InitOptions(7)).ok());
  for (const auto& [name, p] : Params(*model)) {
    ASSERT_FALSE(p.is_meta()) << name;
    ASSERT_TRUE(p.requires_grad()) << name;
    if (name.find("norm") != std::string::npos) {
      EXPECT_TRUE(at::equal(p, at::ones_like(p))) << name;
    } else {
      EXPECT_NEAR(p.mean().item<double>(), 0.0, 0.005) << name;
      EXPECT_NEAR(p.std().item<double>(), model->config.initializer_range, 0.004) << name;
    }
  }
}

TEST(InitializeWeights, DeterministicPerSeedAndName) {
  auto a = MetaModel("tests/data/hf/llama"), b = MetaModel("tests/data/hf/llama"),
       c = MetaModel("tests/data/hf/llama");
  ASSERT_TRUE(InitializeWeights(*a, InitOptions(1)).ok());
  ASSERT_TRUE(InitializeWeights(*b, InitOptions(1)).ok());
  ASSERT_TRUE(InitializeWeights(*c, InitOptions(2)).ok());
  auto pa = Params(*a), pb = Params(*b), pc = Params(*c);
  for (const auto& [name, p] : pa) {
    EXPECT_TRUE(at::equal(p, pb[name])) << name;
    if (name.find("proj") != std::string::npos) EXPECT_FALSE(at::equal(p, pc[name])) << name;
  }
  // Different parameters of the same shape differ.
  EXPECT_FALSE(at::equal(pa["model.layers.0.self_attn.q_proj.weight"],
                         pa["model.layers.1.self_attn.q_proj.weight"]));
}

TEST(InitializeWeights, SlicesEqualSlicingTheFullWeights) {
  auto full = MetaModel("tests/data/hf/llama"), part = MetaModel("tests/data/hf/llama");
  ASSERT_TRUE(InitializeWeights(*full, InitOptions(3)).ok());
  InitOptions options(3);
  options.slice_of = [](const std::string& name) -> Slice {
    if (name.find("q_proj") != std::string::npos) return {{{2, 5}, {9, 12}}, {}};  // packed-like
    if (name.find("down_proj") != std::string::npos) return {{}, {{4, 8}}};
    return {};
  };
  ASSERT_TRUE(InitializeWeights(*part, options).ok());
  auto pf = Params(*full), pp = Params(*part);
  for (const auto& [name, p] : pp) {
    EXPECT_TRUE(at::equal(p, SliceTensor(pf[name], options.slice_of(name)))) << name;
  }
  EXPECT_EQ(pp["model.layers.0.self_attn.q_proj.weight"].size(0), 6);
  EXPECT_EQ(pp["model.layers.0.mlp.down_proj.weight"].size(1), 4);
}

TEST(InitializeWeights, TiedEmbeddingsShareOneTensor) {
  auto model = MetaModel("tests/data/gen/llama-tied");
  ASSERT_TRUE(model->config.tie_word_embeddings);
  ASSERT_TRUE(InitializeWeights(*model, InitOptions(0)).ok());
  auto p = Params(*model);
  EXPECT_EQ(p["lm_head.weight"].data_ptr(), p["model.embed_tokens.weight"].data_ptr());
}

}  // namespace
}  // namespace weft
