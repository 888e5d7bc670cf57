#include "cli/model_commands.h"

#include <ATen/ATen.h>

#include <fstream>
#include <sstream>

#include "checkpoint/safetensors.h"
#include "gtest/gtest.h"

namespace weft {
namespace {

std::string Tmp(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir ? dir : "/tmp") + "/" + name;
}

TEST(ForwardCommand, WritesLogitsHiddenStatesAndATrace) {
  auto ref = SafetensorsFile::Open("tests/data/hf/qwen2/reference.safetensors");
  ASSERT_TRUE(ref.ok());
  ASSERT_TRUE(
      WriteSafetensors(Tmp("in.safetensors"), {{"input_ids", (*ref)->Get("input_ids")}}).ok());
  ForwardCommand c;
  c.model = "tests/data/hf/qwen2";
  c.input = Tmp("in.safetensors");
  c.output = Tmp("out.safetensors");
  c.hidden_states = true;
  c.attn = "eager";
  c.trace = Tmp("trace.json");
  std::ostringstream err;
  ASSERT_EQ(RunForward(c, err), 0) << err.str();
  auto out = SafetensorsFile::Open(c.output);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(at::allclose((*out)->Get("logits"), (*ref)->Get("logits"), 0, 1e-4));
  for (int i = 0; i < 3; ++i) {
    std::string name = "hidden_states_" + std::to_string(i);
    EXPECT_TRUE(at::allclose((*out)->Get(name), (*ref)->Get(name), 0, 1e-4)) << name;
  }
  std::ifstream trace(c.trace);
  std::string json((std::istreambuf_iterator<char>(trace)), std::istreambuf_iterator<char>());
  EXPECT_NE(json.find("\"module\": \"model.layers.1.self_attn.q_proj\", \"type\": \"Linear\""),
            std::string::npos);
  EXPECT_NE(json.find("\"shape\": [2, 16, 256], \"dtype\": \"Float\""), std::string::npos);
}

TEST(ForwardCommand, BadInputIsOneLine) {
  ForwardCommand c;
  c.model = "tests/data/hf/llama";
  c.input = Tmp("missing.safetensors");
  c.output = Tmp("o.safetensors");
  std::ostringstream err;
  EXPECT_EQ(RunForward(c, err), 2);
  EXPECT_EQ(err.str().rfind("weft forward: open(" + c.input + "): No such file or directory", 0),
            0u)
      << err.str();
  c.dtype = "int8";
  std::ostringstream err2;
  EXPECT_EQ(RunForward(c, err2), 2);
  EXPECT_EQ(err2.str(),
            "weft forward: --dtype int8 is not supported (expected float32 or bfloat16)\n");
}

TEST(GenerateCommand, GreedyIdsAndErrors) {
  GenerateCommand c;
  c.model = "tests/data/hf/mistral";
  c.prompt_ids = "47,211,38,53,204,116,152,249";
  c.max_new_tokens = 8;
  std::ostringstream out, err;
  ASSERT_EQ(RunGenerate(c, out, err), 0) << err.str();
  EXPECT_EQ(out.str(), "47,211,38,53,204,116,152,249,85,32,239,249,85,249,85,249\n");
  c.prompt_ids = "1,x";
  std::ostringstream out2, err2;
  EXPECT_EQ(RunGenerate(c, out2, err2), 2);
  EXPECT_EQ(err2.str(),
            "weft generate: --prompt-ids: 'x' is not a token id (expected e.g. 1,2,3)\n");
  c.prompt_ids = "1,999";
  std::ostringstream out3, err3;
  EXPECT_EQ(RunGenerate(c, out3, err3), 2);
  EXPECT_EQ(err3.str(), "weft generate: --prompt-ids: 999 is not below vocab_size 256\n");
}

}  // namespace
}  // namespace weft
