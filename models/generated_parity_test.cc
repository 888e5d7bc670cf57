// Parity with transformers on tests/data/gen (tools/make_test_data.py):
// rope scaling types, padding masks, tied embeddings, sliding windows and the
// architectures the shared fixtures lack. Same tolerances as parity_test.
#include <ATen/ATen.h>

#include <filesystem>

#include "base/text_file.h"
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

// Bad input in what the new architectures read is one line naming it: a
// config value of the wrong type, a per-expert checkpoint missing an expert
// or holding a part of the wrong shape.
TEST(Architectures, BadConfigValuesAndPerExpertCheckpointsAreNamed) {
  auto config = ParseModelConfig(R"({"architectures": ["GraniteForCausalLM"],
      "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1,
      "num_attention_heads": 2, "vocab_size": 8, "attention_multiplier": "big"})");
  ASSERT_TRUE(config.ok()) << config.status();
  auto model = CreateCausalLM(*config, {});
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().message(),
            "config.json: attention_multiplier is \"big\" (expected a number)");

  const std::string src = "tests/data/gen/qwen3-moe";
  auto file = SafetensorsFile::Open(src + "/model.safetensors");
  ASSERT_TRUE(file.ok());
  const std::string config_json = ReadTextFile(src + "/config.json").value_or("");
  auto write = [&](const std::string& dir, const std::string& drop, const std::string& cut) {
    std::filesystem::create_directories(dir);
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    for (const TensorEntry& e : (*file)->tensors()) {
      if (e.name == drop) continue;
      at::Tensor t = (*file)->Get(e);
      tensors.emplace_back(e.name, e.name == cut ? t.narrow(0, 0, 8).contiguous() : t);
    }
    ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors", tensors).ok());
    ASSERT_TRUE(WriteTextFileAtomically(dir + "/config.json", config_json).ok());
  };
  PretrainedOptions options;
  options.dtype = at::kFloat;
  const std::string missing = ::testing::TempDir() + "/moe_missing";
  write(missing, "model.layers.0.mlp.experts.3.up_proj.weight", "");
  auto a = FromPretrained(missing, options);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().message(),
            missing +
                ": the checkpoint has neither 'model.layers.0.mlp.experts.gate_up_proj' nor "
                "'model.layers.0.mlp.experts.3.up_proj.weight' (expert 3 of its per-expert "
                "layout)");
  const std::string cut = ::testing::TempDir() + "/moe_cut";
  write(cut, "", "model.layers.0.mlp.experts.2.down_proj.weight");
  auto b = FromPretrained(cut, options);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().message(),
            cut +
                ": tensor 'model.layers.0.mlp.experts.2.down_proj.weight' has shape [8, 16] "
                "(expected [rows, 16], one part of model.layers.0.mlp.experts.down_proj "
                "[4, 32, 16])");
}

// Packing: two documents in one row, positions restarting at the second
// and its first label -100, give each document's logits as if it were
// alone (attention never crosses: a dropped block-diagonal mask fails this)
// and the gradients of the two documents' summed losses; eager and sdpa,
// sliding windows (within a document), soft-capping, sinks and MoE routers
// included.
class Packed : public ::testing::TestWithParam<std::string> {};

TEST_P(Packed, DocumentsInOneRowEqualDocumentsAlone) {
  const std::string dir = "tests/data/gen/" + GetParam();
  for (const char* attention : {"eager", "sdpa"}) {
    SCOPED_TRACE(attention);
    PretrainedOptions pretrained;
    pretrained.dtype = at::kFloat;
    pretrained.attn_implementation = attention;
    auto model = FromPretrained(dir, pretrained);
    ASSERT_TRUE(model.ok()) << model.status();
    auto ref = SafetensorsFile::Open(dir + "/reference.safetensors");
    ASSERT_TRUE(ref.ok()) << ref.status();
    const at::Tensor ids = (*ref)->Get("input_ids").clone().narrow(0, 0, 1);  // [1, 12]
    const int64_t a = 5, n = ids.size(1);
    auto grads = [&]() {
      std::vector<at::Tensor> out;
      for (const auto& item : (*model)->named_parameters()) {
        out.push_back(item.value().grad().defined() ? item.value().grad().clone()
                                                    : at::zeros_like(item.value()));
        item.value().mutable_grad() = at::Tensor();
      }
      return out;
    };
    // Alone: each document's loss summed over its counted tokens.
    std::vector<at::Tensor> alone_logits;
    at::Tensor alone_loss = at::zeros({}, at::kFloat);
    for (auto [begin, len] : {std::pair<int64_t, int64_t>{0, a}, {a, n - a}}) {
      CausalLMInputs doc;
      doc.input_ids = ids.narrow(1, begin, len);
      doc.labels = doc.input_ids;
      CausalLMOutput out = (*model)->Forward(doc);
      alone_logits.push_back(out.logits.detach());
      alone_loss = alone_loss + out.loss * static_cast<double>(len - 1);
    }
    alone_loss.backward();
    const std::vector<at::Tensor> want = grads();
    // Packed: one row, positions 0..a-1, 0..n-a-1; the second document's
    // first token is no label (it is not predicted from the first's end).
    CausalLMInputs packed;
    packed.input_ids = ids;
    packed.position_ids = at::cat({at::arange(a), at::arange(n - a)}).view({1, n});
    packed.labels = ids.clone();
    packed.labels.index_put_({0, a}, -100);
    CausalLMOutput out = (*model)->Forward(packed);
    EXPECT_LT(MaxDiff(out.logits.narrow(1, 0, a), alone_logits[0]), 1e-5);
    EXPECT_LT(MaxDiff(out.logits.narrow(1, a, n - a), alone_logits[1]), 1e-5);
    (out.loss * static_cast<double>(n - 2)).backward();  // n - 1 targets, one of them -100
    const std::vector<at::Tensor> got = grads();
    size_t i = 0;
    for (const auto& item : (*model)->named_parameters()) {
      // fp32 sums in another order: 1e-5 plus float rounding of the largest entry.
      const double scale = want[i].abs().max().item<double>();
      EXPECT_LT(MaxDiff(got[i], want[i]), 1e-5 + 1e-6 * scale)
          << item.key() << " (max " << scale << ")";
      ++i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, Packed,
                         ::testing::Values("llama-tied", "mistral-window", "qwen3", "phi3",
                                           "gemma2", "gemma3", "qwen3-moe", "gpt-oss", "olmo2",
                                           "smollm3", "granite"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name)
                             if (c == '-') c = '_';
                           return name;
                         });

INSTANTIATE_TEST_SUITE_P(Cases, Generated,
                         ::testing::Values("llama-padded", "llama-tied", "llama-rope-linear",
                                           "llama-rope-dynamic", "llama-rope-llama3",
                                           "llama-rope-yarn", "mistral-window", "qwen2-window",
                                           "qwen3", "phi3", "phi3-mqa", "mixtral", "granite",
                                           "smollm3", "olmo2", "gemma2", "gemma3", "qwen3-moe",
                                           "gpt-oss"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name)
                             if (c == '-') c = '_';
                           return name;
                         });

}  // namespace
}  // namespace weft
