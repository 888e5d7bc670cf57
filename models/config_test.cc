#include "models/config.h"

#include "gtest/gtest.h"

namespace weft {
namespace {

TEST(ModelConfig, DefaultsFollowTransformers) {
  auto c = ParseModelConfig(R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
      "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 256})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "LlamaForCausalLM");
  EXPECT_EQ(c->num_key_value_heads, 4);
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(c->rope_scaling.type, "default");
  EXPECT_FALSE(c->sliding_window.has_value());
}

// Heads must divide hidden_size unless head_dim is given (it was reported
// later as a q_proj shape mismatch).
TEST(ModelConfig, HeadsMustDivideHiddenSize) {
  auto c = ParseModelConfig(R"({"hidden_size": 100, "intermediate_size": 128,
      "num_hidden_layers": 2, "num_attention_heads": 3, "vocab_size": 256})");
  EXPECT_EQ(c.status().message(),
            "config.json: hidden_size 100 is not divisible by num_attention_heads 3 (expected a "
            "multiple, or an explicit head_dim)");
  auto explicit_dim = ParseModelConfig(R"({"hidden_size": 100, "intermediate_size": 128,
      "num_hidden_layers": 2, "num_attention_heads": 3, "head_dim": 32, "vocab_size": 256})");
  EXPECT_TRUE(explicit_dim.ok()) << explicit_dim.status();
}

// Token ids are any non-negative integer, 0 included, or null; eos may be
// a list (Llama 3, Qwen), and every id in it ends generation.
TEST(ModelConfig, TokenIdsIncludeZeroListsAndNull) {
  const std::string base = R"("hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
      "num_attention_heads": 4, "vocab_size": 256)";
  auto c = ParseModelConfig("{" + base +
                            R"(, "bos_token_id": 0, "eos_token_id": [2, 7], "pad_token_id": 0})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->bos_token_id, 0);
  EXPECT_EQ(c->eos_token_id, 2);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int64_t>{2, 7}));
  EXPECT_EQ(c->pad_token_id, 0);
  auto null_ids = ParseModelConfig("{" + base + R"(, "bos_token_id": null, "eos_token_id": 5})");
  ASSERT_TRUE(null_ids.ok()) << null_ids.status();
  EXPECT_FALSE(null_ids->bos_token_id.has_value());
  EXPECT_EQ(null_ids->eos_token_ids, (std::vector<int64_t>{5}));
  EXPECT_EQ(ParseModelConfig("{" + base + R"(, "bos_token_id": -1})").status().message(),
            "config.json: bos_token_id is -1 (expected a non-negative token id or null)");
  EXPECT_EQ(ParseModelConfig("{" + base + R"(, "eos_token_id": [1, "x"]})").status().message(),
            "config.json: eos_token_id is \"x\" (expected a non-negative token id, a list of "
            "them, or null)");
}

TEST(ModelConfig, ReadsRopeScalingAndWindows) {
  auto c = ParseModelConfig(R"({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
      "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256, "sliding_window": 4096,
      "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_scaling.type, "llama3");
  EXPECT_EQ(c->rope_scaling.factor, 8.0);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(c->sliding_window, 4096);
  auto qwen =
      ParseModelConfig(R"({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
      "num_attention_heads": 4, "vocab_size": 256, "sliding_window": 4096, "use_sliding_window": false})");
  ASSERT_TRUE(qwen.ok());
  EXPECT_FALSE(qwen->sliding_window.has_value());
}

TEST(ModelConfig, ErrorsNameKeyAndValue) {
  auto error = [](const std::string& text) {
    auto c = ParseModelConfig(text);
    return c.ok() ? "OK" : std::string(c.status().message());
  };
  const std::string base =
      R"("intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 256)";
  EXPECT_EQ(error("{" + base + "}"),
            "config.json: hidden_size is missing (expected a positive integer)");
  EXPECT_EQ(error(R"({"hidden_size": -64, )" + base + "}"),
            "config.json: hidden_size is -64 (expected a positive integer)");
  EXPECT_EQ(error(R"({"hidden_size": 64, "num_key_value_heads": 3, )" + base + "}"),
            "config.json: num_attention_heads 4 is not a multiple of num_key_value_heads 3");
  EXPECT_EQ(
      error(R"({"hidden_size": 64, "hidden_act": "swish9", )" + base + "}"),
      "config.json: hidden_act is \"swish9\" (expected silu, gelu, gelu_pytorch_tanh or relu)");
  EXPECT_EQ(
      error(R"({"hidden_size": 64, "rope_scaling": {"rope_type": "longrope"}, )" + base + "}"),
      "config.json: rope_scaling.rope_type is \"longrope\" (expected default, linear, dynamic, "
      "llama3 or yarn)");
  EXPECT_EQ(error(R"({"hidden_size": 64, "tie_word_embeddings": "yes", )" + base + "}"),
            "config.json: tie_word_embeddings is \"yes\" (expected true or false)");
}

}  // namespace
}  // namespace weft

#include "models/causal_lm.h"

namespace weft {
namespace {

TEST(ModelConfig, UnsupportedOptionsAreErrors) {
  auto c = ParseModelConfig(R"({"architectures": ["Qwen3ForCausalLM"], "hidden_size": 64,
      "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 256,
      "use_sliding_window": true, "sliding_window": 8})");
  ASSERT_TRUE(c.ok()) << c.status();
  auto model = CreateCausalLM(*c, {});
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().message(),
            "config.json: use_sliding_window is true with sliding_window 8 (expected false: Qwen3 "
            "sliding-window layers are not supported yet)");
  auto partial = ParseModelConfig(R"({"hidden_size": 64, "intermediate_size": 128,
      "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 256,
      "rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}})");
  ASSERT_FALSE(partial.ok());
  EXPECT_EQ(partial.status().message(),
            "config.json: partial_rotary_factor is 0.5 (expected 1.0: partial rotary embeddings "
            "are not supported yet)");
}

}  // namespace
}  // namespace weft
