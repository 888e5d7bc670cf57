#include "trainer/lora.h"

#include <ATen/ATen.h>

#include <cstdlib>
#include <filesystem>

#include "absl/strings/match.h"
#include "base/text_file.h"
#include "checkpoint/safetensors.h"
#include "gtest/gtest.h"
#include "models/layers.h"
#include "models/pretrained.h"

namespace weft {
namespace {

std::shared_ptr<CausalLM> Llama() {
  PretrainedOptions options;
  options.dtype = at::kFloat;
  options.attn_implementation = "eager";
  auto model = FromPretrained("tests/data/hf/llama", options);
  EXPECT_TRUE(model.ok()) << model.status();
  return *model;
}

at::Tensor Logits(CausalLM& model) {
  at::NoGradGuard no_grad;
  CausalLMInputs inputs;
  inputs.input_ids = at::arange(10, at::kLong).view({1, 10});
  return model.Forward(inputs).logits;
}

std::string TmpDir(const std::string& name) {
  const char* base = std::getenv("TEST_TMPDIR");
  return std::string(base ? base : "/tmp") + "/" + name;
}

// PEFT's layout: A [r, in] (torch Linear's init), B [out, r] zeros, so the
// adapted model starts as the base; only the adapters train; the output is
// W x + scale B A x (a merged weight gives the same logits).
TEST(Lora, AdaptsTheTargetsAndStartsFromTheBase) {
  auto model = Llama();
  const at::Tensor base = Logits(*model);
  LoraOptions o;
  o.r = 4;
  o.alpha = 8;
  o.target_modules = {"q_proj", "self_attn.v_proj"};
  auto summary = ApplyLora(*model, o, nullptr);
  ASSERT_TRUE(summary.ok()) << summary.status();
  const int64_t layers = model->config.num_hidden_layers;
  ASSERT_EQ(summary->modules.size(), static_cast<size_t>(2 * layers));
  EXPECT_EQ(summary->modules[0], "model.layers.0.self_attn.q_proj");
  auto params = model->named_parameters();
  const at::Tensor a = params["model.layers.0.self_attn.q_proj.lora_A.weight"];
  const at::Tensor b = params["model.layers.0.self_attn.v_proj.lora_B.weight"];
  EXPECT_EQ(a.sizes().vec(), (std::vector<int64_t>{4, model->config.hidden_size}));
  EXPECT_EQ(b.size(1), 4);
  EXPECT_TRUE(at::equal(b, at::zeros_like(b)));
  EXPECT_GT(a.abs().max().item<double>(), 0);
  EXPECT_LE(a.abs().max().item<double>(), 1.0 / std::sqrt(a.size(1)));
  int trainable = 0;
  for (const auto& item : params) {
    EXPECT_EQ(item.value().requires_grad(), IsLoraParameter(item.key())) << item.key();
    trainable += item.value().requires_grad();
  }
  EXPECT_EQ(trainable, 4 * layers);
  EXPECT_TRUE(at::allclose(Logits(*model), base, 0, 0));  // B = 0: the base

  // A trained adapter: the same logits as the merged weights.
  {
    at::NoGradGuard no_grad;
    for (auto& item : model->named_parameters()) {
      if (absl::EndsWith(item.key(), "lora_B.weight")) item.value().normal_(0, 0.05);
    }
  }
  const at::Tensor adapted = Logits(*model);
  EXPECT_GT((adapted - base).abs().max().item<double>(), 1e-3);
  auto merged = Llama();
  {
    at::NoGradGuard no_grad;
    auto mp = merged->named_parameters();
    for (const std::string& m : summary->modules) {
      at::Tensor w = mp[m + ".weight"];
      w.add_(at::matmul(params[m + ".lora_B.weight"], params[m + ".lora_A.weight"]) * o.scale());
    }
  }
  EXPECT_LT((Logits(*merged) - adapted).abs().max().item<double>(), 1e-5);

  // PEFT's files: written, read back, loaded into a fresh model: the same logits.
  const std::string dir = TmpDir("lora_adapter");
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& item : model->named_parameters()) {
    if (IsLoraParameter(item.key())) tensors.emplace_back(item.key(), item.value());
  }
  ASSERT_TRUE(WritePeftAdapter(dir, o, "tests/data/hf/llama", *summary, tensors).ok());
  auto file = SafetensorsFile::Open(dir + "/adapter_model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_NE((*file)->Find("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"),
            nullptr);
  const std::string config = ReadTextFile(dir + "/adapter_config.json").value_or("");
  EXPECT_NE(config.find("\"target_modules\": [\"q_proj\", \"self_attn.v_proj\"]"),
            std::string::npos)
      << config;
  EXPECT_NE(config.find("\"peft_type\": \"LORA\""), std::string::npos);
  EXPECT_NE(config.find("\"lora_alpha\": 8"), std::string::npos);
  auto fresh = Llama();
  auto loaded = LoadPeftAdapter(*fresh, dir, nullptr);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(at::allclose(Logits(*fresh), adapted, 0, 0));
}

TEST(Lora, ErrorsNameTheProblem) {
  auto model = Llama();
  LoraOptions o;
  o.target_modules = {"qkv_proj"};
  EXPECT_EQ(ApplyLora(*model, o, nullptr).status().message(),
            "lora target_modules 'qkv_proj' matches no Linear module of LlamaForCausalLM "
            "(expected one of: down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, "
            "v_proj, all-linear, or a pattern)");
  o.r = 0;
  EXPECT_EQ(ApplyLora(*model, o, nullptr).status().message(), "lora.r 0 (expected >= 1)");
  // all-linear: every Linear but the head; weft patterns select layers.
  o.r = 2;
  o.target_modules = {"all-linear"};
  auto all = ApplyLora(*Llama(), o, nullptr);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->modules.size(), static_cast<size_t>(7 * model->config.num_hidden_layers));
  o.target_modules = {"model.layers.0.mlp.*"};
  auto some = ApplyLora(*Llama(), o, nullptr);
  ASSERT_TRUE(some.ok()) << some.status();
  EXPECT_EQ(some->modules.size(), 3u);
  // ...and PEFT gets exactly those modules as a regex.
  const std::string config = PeftAdapterConfig(o, "base", *some);
  EXPECT_NE(config.find(R"("target_modules": "^(model\\.layers\\.0\\.mlp\\.gate_proj|)"),
            std::string::npos)
      << config;

  // What weft does not implement is refused, not ignored.
  const std::string dir = TmpDir("dora_adapter");
  std::filesystem::create_directories(dir);
  ASSERT_TRUE(WriteTextFileAtomically(dir + "/adapter_config.json",
                                      R"({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
                                          "target_modules": ["q_proj"], "use_dora": true})")
                  .ok());
  EXPECT_EQ(ReadPeftAdapterConfig(dir).status().message(),
            dir + "/adapter_config.json: use_dora is true (expected false: not supported by weft)");
}

}  // namespace
}  // namespace weft
