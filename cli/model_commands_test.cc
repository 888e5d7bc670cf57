#include "cli/model_commands.h"

#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include "base/text_file.h"
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

// --prompt-ids gives forward its input without a safetensors file, with the
// same logits; exactly one of the two is required.
TEST(ForwardCommand, PromptIdsInsteadOfAFile) {
  ASSERT_TRUE(WriteSafetensors(Tmp("ids.safetensors"),
                               {{"input_ids", at::tensor({47, 211, 38}, at::kLong).view({1, 3})}})
                  .ok());
  ForwardCommand from_file;
  from_file.model = "tests/data/hf/llama";
  from_file.input = Tmp("ids.safetensors");
  from_file.output = Tmp("from_file.safetensors");
  std::ostringstream err;
  ASSERT_EQ(RunForward(from_file, err), 0) << err.str();
  ForwardCommand from_ids = from_file;
  from_ids.input.clear();
  from_ids.prompt_ids = "47,211,38";
  from_ids.output = Tmp("from_ids.safetensors");
  ASSERT_EQ(RunForward(from_ids, err), 0) << err.str();
  auto a = SafetensorsFile::Open(from_file.output);
  auto b = SafetensorsFile::Open(from_ids.output);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(at::equal((*a)->Get("logits"), (*b)->Get("logits")));
  ForwardCommand both = from_file;
  both.prompt_ids = "1";
  std::ostringstream both_err;
  EXPECT_EQ(RunForward(both, both_err), 2);
  EXPECT_EQ(both_err.str(),
            "weft forward: give exactly one of --input (a safetensors file with input_ids) and "
            "--prompt-ids\n");
}

// Out-of-range ids and flags are one line naming the value and the bound.
TEST(ModelCommands, IdsAndFlagsAreValidated) {
  ASSERT_TRUE(WriteSafetensors(Tmp("big_id.safetensors"),
                               {{"input_ids", at::tensor({1, 2, 300}, at::kLong).view({1, 3})}})
                  .ok());
  ForwardCommand f;
  f.model = "tests/data/hf/llama";
  f.input = Tmp("big_id.safetensors");
  f.output = Tmp("big_id_out.safetensors");
  std::ostringstream ferr;
  EXPECT_EQ(RunForward(f, ferr), 2);
  EXPECT_EQ(ferr.str(), "weft forward: " + f.input +
                            ": input_ids: token id 300 is outside the vocabulary (expected 0 <= id "
                            "< vocab_size 256)\n");
  ForwardCommand d;
  d.model = "tests/data/hf/llama";
  d.prompt_ids = "1,2";
  d.output = Tmp("device_out.safetensors");
  d.device = "tpu";
  std::ostringstream derr;
  EXPECT_EQ(RunForward(d, derr), 2);
  EXPECT_EQ(derr.str(), "weft forward: --device 'tpu' (expected cpu, cuda or cuda:N)\n");
  d.device = "cpu";
  d.adapter = Tmp("no_such_adapter");
  std::ostringstream aerr;
  EXPECT_EQ(RunForward(d, aerr), 2);
  EXPECT_EQ(aerr.str(), "weft forward: " + d.adapter +
                            "/adapter_config.json: cannot be opened (No such file or directory)\n");
  struct Case {
    std::function<void(GenerateCommand&)> set;
    std::string error;
  };
  const std::vector<Case> cases = {
      {[](GenerateCommand& c) { c.max_new_tokens = -1; },
       "--max-new-tokens -1 is negative (expected >= 0)"},
      {[](GenerateCommand& c) { c.greedy = false, c.top_p = 2; },
       "--top-p 2 is not a probability mass (expected 0 < p <= 1)"},
      {[](GenerateCommand& c) { c.greedy = false, c.top_p = 0; },
       "--top-p 0 is not a probability mass (expected 0 < p <= 1)"},
      {[](GenerateCommand& c) { c.greedy = false, c.top_k = -5; },
       "--top-k -5 is negative (expected >= 0; 0 keeps every token)"},
      {[](GenerateCommand& c) { c.greedy = false, c.temperature = 0; },
       "--temperature 0 is not a temperature (expected > 0)"},
      {[](GenerateCommand& c) { c.max_new_tokens = 1000000; },
       "--max-new-tokens 1000000 with a prompt of 3 tokens makes 1000003 positions (expected at "
       "most max_position_embeddings 256)"},
  };
  for (const Case& k : cases) {
    GenerateCommand c;
    c.model = "tests/data/hf/llama";
    c.prompt_ids = "1,2,3";
    k.set(c);
    std::ostringstream out, err;
    EXPECT_EQ(RunGenerate(c, out, err), 2);
    EXPECT_EQ(err.str(), "weft generate: " + k.error + "\n");
  }
}

// Generation stops at any id of an eos list (Llama 3, Qwen): the greedy
// continuation above is 85, 32, ...; with eos_token_id [999, 32] it stops
// after 32.
TEST(GenerateCommand, StopsAtAnyIdOfAnEosList) {
  const std::string dir = Tmp("mistral_eos_list");
  std::filesystem::create_directories(dir);
  for (const auto& entry : std::filesystem::directory_iterator("tests/data/hf/mistral")) {
    std::filesystem::copy(entry.path(), dir + "/" + entry.path().filename().string(),
                          std::filesystem::copy_options::overwrite_existing);
  }
  std::string config = ReadTextFile(dir + "/config.json").value();
  const size_t brace = config.rfind('}');
  config = config.substr(0, brace) + ", \"eos_token_id\": [999, 32]}";
  {
    // The fixture's own eos_token_id is replaced: JSON keeps the first
    // occurrence, so drop it.
    const size_t key = config.find("\"eos_token_id\"");
    const size_t last = config.rfind("\"eos_token_id\"");
    if (key != last) {
      const size_t end = config.find_first_of(",}", key);
      config.erase(key, end - key + (config[end] == ',' ? 1 : 0));
    }
  }
  ASSERT_TRUE(WriteTextFileAtomically(dir + "/config.json", config).ok());
  GenerateCommand c;
  c.model = dir;
  c.prompt_ids = "47,211,38,53,204,116,152,249";
  c.max_new_tokens = 8;
  std::ostringstream out, err;
  ASSERT_EQ(RunGenerate(c, out, err), 0) << err.str();
  EXPECT_EQ(out.str(), "47,211,38,53,204,116,152,249,85,32\n");
}

}  // namespace
}  // namespace weft
