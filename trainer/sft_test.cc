// Fine-tuning on instruction data end to end: loss masks, packing and
// evaluation under TP, DP and FSDP against one process.
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "base/json.h"
#include "base/text_file.h"
#include "gtest/gtest.h"
#include "trainer/data_loader.h"
#include "trainer/token_file.h"
#include "trainer/train_testing.h"

namespace weft {
namespace {

namespace fs = std::filesystem;
using train_testing::ExpectSameLosses;
using train_testing::kStepTolerance;
using train_testing::RunAndGetLosses;
using train_testing::TempDir;
using train_testing::Tiny;

// Instruction-like byte-level documents of uneven lengths (18 to 60 tokens):
// a "prompt" whose loss mask is 0, then a "completion".
std::string InstructionData(const std::string& name, int documents, int first = 0) {
  const std::string prefix = TempDir() + "/" + name;
  std::vector<int64_t> tokens, starts = {0};
  std::vector<uint8_t> mask;
  for (int d = first; d < first + documents; ++d) {
    const std::string prompt = "Q" + std::to_string(d) + ": say fox " + std::to_string(d % 5);
    std::string answer = " A:";
    for (int i = 0; i < (d * 7) % 11; ++i) answer += " fox";
    answer += ".\n";
    for (char ch : prompt) {
      tokens.push_back(static_cast<unsigned char>(ch));
      mask.push_back(0);
    }
    for (char ch : answer) {
      tokens.push_back(static_cast<unsigned char>(ch));
      mask.push_back(1);
    }
    starts.push_back(static_cast<int64_t>(tokens.size()));
  }
  EXPECT_TRUE(WriteTokenFile(prefix, tokens, starts, 256, &mask).ok());
  return prefix;
}

TrainConfig Sft(const std::string& name, const std::string& data) {
  TrainConfig c = Tiny(name);
  c.data_text.clear();
  c.data_path = data;
  c.seq_len = 64;
  c.steps = 5;
  c.checkpoint_export = false;
  return c;
}

// (step, eval_loss) from metrics.jsonl.
std::map<int64_t, double> EvalLosses(const TrainConfig& c) {
  std::map<int64_t, double> out;
  std::ifstream in(c.output_dir + "/metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    auto record = ParseJson(line);
    if (!record.ok()) continue;
    const JsonValue* step = record->Find("step");
    const JsonValue* eval = record->Find("eval_loss");
    if (step != nullptr && eval != nullptr) {
      out[static_cast<int64_t>(*step->AsUint64())] = *eval->AsDouble();
    }
  }
  return out;
}

// Masked, packed training: the loss is the mean over the global batch's
// counted labels (not each rank's mean), so TP=2, DP=2 and dp_shard=2 equal
// one process step by step; the validation loss too, on a held-out eval set
// whose 7 samples end unevenly over the ranks.
TEST(Sft, MaskedPackedTrainingAndEvalEqualOneProcess) {
  const std::string data = InstructionData("sft_train", 160);
  const std::string eval = InstructionData("sft_eval", 25, 1000);
  auto config = [&](const std::string& name) {
    TrainConfig c = Sft(name, data);
    c.packing = true;
    c.data_eval_path = eval;
    c.eval_every = 2;
    c.global_batch = 4;
    return c;
  };
  const TrainConfig one = config("sft_one");
  const std::vector<double> want = RunAndGetLosses(1, one);
  const std::map<int64_t, double> want_eval = EvalLosses(one);
  ASSERT_EQ(want_eval.size(), 3u);  // steps 2, 4 and the end (5)
  EXPECT_LT(want_eval.rbegin()->second, want_eval.begin()->second);
  for (const auto& [name, world, edit] :
       std::vector<std::tuple<std::string, int, std::function<void(TrainConfig&)>>>{
           {"tp2", 2, [](TrainConfig& c) { c.tp = 2; }},
           {"dp2", 2, [](TrainConfig& c) { c.dp = 2; }},
           {"dp_shard2", 2, [](TrainConfig& c) { c.dp_shard = 2; }}}) {
    SCOPED_TRACE(name);
    TrainConfig c = config("sft_" + name);
    edit(c);
    ExpectSameLosses(want, RunAndGetLosses(world, c), 5, kStepTolerance);
    const std::map<int64_t, double> got = EvalLosses(c);
    ASSERT_EQ(got.size(), want_eval.size());
    for (const auto& [step, loss] : want_eval) EXPECT_NEAR(got.at(step), loss, kStepTolerance);
  }
  const std::string log = ReadTextFile(one.output_dir + "/log.txt").value_or("");
  EXPECT_NE(log.find("with a loss mask (labels -100 where it is 0)"), std::string::npos) << log;
  EXPECT_NE(log.find("| eval loss "), std::string::npos) << log;
  const std::string svg = ReadTextFile(one.output_dir + "/loss.svg").value_or("");
  EXPECT_NE(svg.find("class=\"eval\""), std::string::npos);
}

// Packing changes the rows, not what is learned from each document: the
// first step's loss over the same 24 documents packed into rows of 64 or of
// 256 (so other neighbours share a row) is the same, which fails if
// attention or labels cross a document boundary. data.eval_fraction holds
// documents out of training.
TEST(Sft, PackingArrangementDoesNotChangeTheLoss) {
  const std::string data = InstructionData("sft_rows", 24);
  auto file = TokenFile::Open(data);
  ASSERT_TRUE(file.ok()) << file.status();
  std::vector<double> first;
  for (int64_t seq_len : {64, 256}) {
    DataLoaderOptions o;
    o.seq_len = seq_len;
    o.global_batch = 1;
    o.packing = true;
    auto rows = DataLoader::Create(*file, o);
    ASSERT_TRUE(rows.ok()) << rows.status();
    TrainConfig c = Sft("sft_rows_" + std::to_string(seq_len), data);
    c.seq_len = seq_len;
    c.packing = true;
    c.global_batch = (*rows)->num_samples();  // every document in step 1
    c.micro_batch = 1;
    c.steps = 1;
    std::vector<double> losses = RunAndGetLosses(1, c);
    ASSERT_EQ(losses.size(), 1u);
    first.push_back(losses[0]);
  }
  EXPECT_NEAR(first[0], first[1], 1e-5);

  TrainConfig held = Sft("sft_eval_fraction", InstructionData("sft_fraction", 100));
  held.packing = true;
  held.eval_fraction = 0.2;
  held.global_batch = 4;
  held.steps = 2;
  ASSERT_EQ(RunAndGetLosses(1, held).size(), 2u);
  EXPECT_EQ(EvalLosses(held).size(), 1u);
  const std::string log = ReadTextFile(held.output_dir + "/log.txt").value_or("");
  EXPECT_NE(log.find("[train] eval: 20 documents of "), std::string::npos) << log;
}

}  // namespace
}  // namespace weft
