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
