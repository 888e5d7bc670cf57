// Fine-tuning on instruction data end to end: loss masks, packing and
// evaluation under TP, DP and FSDP against one process.
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include "base/json.h"
#include "base/text_file.h"
#include "checkpoint/safetensors.h"
#include "gtest/gtest.h"
#include "models/pretrained.h"
#include "trainer/data_loader.h"
#include "trainer/lora.h"
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
  {
    // Pipeline stages rebuild the packed mask from the positions they get;
    // evaluation runs through the stages.
    SCOPED_TRACE("pp2");
    TrainConfig c = config("sft_pp2");
    c.pp = 2;
    c.micro_batch = 1;
    c.pp_microbatches = 4;
    ExpectSameLosses(want, RunAndGetLosses(2, c), 5, kStepTolerance);
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

// A base model on disk: the Hugging Face export of a short full run.
std::string LoraBase() {
  TrainConfig c = Tiny("lora_base");
  c.steps = 3;
  c.checkpoint_export = true;
  if (!fs::exists(c.output_dir + "/hf/model.safetensors")) RunAndGetLosses(1, c);
  return c.output_dir + "/hf";
}

at::Tensor LogitsOf(CausalLM& model) {
  at::NoGradGuard no_grad;
  CausalLMInputs inputs;
  inputs.input_ids = at::arange(40, 72, at::kLong).view({1, 32});
  return model.Forward(inputs).logits;
}

// LoRA on every Linear (colwise q/k/v/gate/up, rowwise o/down) trains only
// the adapters and equals one process step by step at TP=2, DP=2 and PP=2,
// and after resuming a TP=2 checkpoint at tp 1; checkpoints hold the
// adapters and their AdamW moments only; the export is PEFT's adapter and,
// with merge_lora, the merged model, whose logits are base + adapter's.
TEST(Lora, AdaptersTrainAndMatchOneProcessUnderTpDpPp) {
  const std::string base = LoraBase();
  auto config = [&](const std::string& name) {
    TrainConfig c = Tiny(name);
    c.model_config.clear();
    c.model_pretrained = base;
    c.lora_r = 4;
    c.lora_alpha = 16;
    c.lora_target_modules = {"all-linear"};
    c.lr = 1e-2;
    c.steps = 6;
    c.checkpoint_export = false;
    return c;
  };
  TrainConfig one = config("lora_one");
  one.checkpoint_export = true;
  one.merge_lora = true;
  const std::vector<double> want = RunAndGetLosses(1, one);
  ASSERT_EQ(want.size(), 6u);
  EXPECT_LT(want.back(), want.front());
  TrainConfig tp = config("lora_tp2");
  tp.tp = 2;
  tp.checkpoint_every = 3;
  {
    SCOPED_TRACE("tp 2");
    ExpectSameLosses(want, RunAndGetLosses(2, tp), 6, kStepTolerance);
  }
  TrainConfig dp = config("lora_dp2");
  dp.dp = 2;
  {
    SCOPED_TRACE("dp 2");
    ExpectSameLosses(want, RunAndGetLosses(2, dp), 6, kStepTolerance);
  }
  TrainConfig sharded = config("lora_dp_shard2");
  sharded.dp_shard = 2;
  sharded.checkpoint_export = true;
  sharded.merge_lora = true;
  {
    SCOPED_TRACE("dp_shard 2");
    ExpectSameLosses(want, RunAndGetLosses(2, sharded), 6, kStepTolerance);
  }
  TrainConfig tp_sharded = config("lora_tp2_dp_shard2");
  tp_sharded.tp = 2;
  tp_sharded.dp_shard = 2;
  {
    SCOPED_TRACE("tp 2 x dp_shard 2");
    ExpectSameLosses(want, RunAndGetLosses(4, tp_sharded), 6, kStepTolerance);
  }
  TrainConfig pp = config("lora_pp2");
  pp.pp = 2;
  pp.micro_batch = 2;
  pp.pp_microbatches = 4;
  {
    SCOPED_TRACE("pp 2");
    ExpectSameLosses(want, RunAndGetLosses(2, pp), 6, kStepTolerance);
  }
  {
    SCOPED_TRACE("tp 2 resumed at tp 1");
    fs::remove_all(tp.output_dir + "/checkpoints/step_00000006");
    TrainConfig resumed = tp;
    resumed.tp = 1;
    resumed.resume = true;
    std::vector<double> got = RunAndGetLosses(1, resumed);
    ASSERT_EQ(got.size(), 3u);
    for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i + 3], kStepTolerance);
  }
  // Checkpoints: the adapters (2 per Linear: 7 per layer) and their moments only.
  int model_tensors = 0, optimizer_tensors = 0;
  for (const auto& entry : fs::directory_iterator(one.output_dir + "/checkpoints/step_00000006")) {
    const std::string file = entry.path().filename().string();
    if (entry.path().extension() != ".safetensors") continue;
    auto f = SafetensorsFile::Open(entry.path().string());
    ASSERT_TRUE(f.ok()) << f.status();
    for (const TensorEntry& e : (*f)->tensors()) {
      EXPECT_NE(e.name.find(".lora_"), std::string::npos) << file << ": " << e.name;
      (file.rfind("model", 0) == 0 ? model_tensors : optimizer_tensors) += 1;
    }
  }
  EXPECT_EQ(model_tensors, 2 * 7 * 2);
  EXPECT_EQ(optimizer_tensors, 2 * model_tensors);
  const std::string log = ReadTextFile(one.output_dir + "/log.txt").value_or("");
  EXPECT_NE(log.find("[train] lora: r 4, alpha 16 (scale 4), dropout 0 on 14 modules"),
            std::string::npos)
      << log;
  // The exports: PEFT's adapter, and the merged model = base + adapter.
  ASSERT_TRUE(fs::exists(one.output_dir + "/adapter/adapter_config.json"));
  ASSERT_FALSE(fs::exists(one.output_dir + "/adapter/.gathered"));
  PretrainedOptions options;
  options.dtype = at::kFloat;
  options.attn_implementation = "eager";
  auto merged = FromPretrained(one.output_dir + "/hf", options);
  ASSERT_TRUE(merged.ok()) << merged.status();
  auto adapted = FromPretrained(base, options);
  ASSERT_TRUE(adapted.ok()) << adapted.status();
  const at::Tensor base_logits = LogitsOf(**adapted);
  auto loaded = LoadPeftAdapter(**adapted, one.output_dir + "/adapter", nullptr);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const at::Tensor with_adapter = LogitsOf(**adapted);
  EXPECT_GT((with_adapter - base_logits).abs().max().item<double>(), 1e-3);  // it learned
  EXPECT_LT((LogitsOf(**merged) - with_adapter).abs().max().item<double>(), 1e-4);
  // dp_shard's exports (gathered from the pieces) are the same model.
  auto sharded_merged = FromPretrained(sharded.output_dir + "/hf", options);
  ASSERT_TRUE(sharded_merged.ok()) << sharded_merged.status();
  EXPECT_LT((LogitsOf(**sharded_merged) - with_adapter).abs().max().item<double>(), 1e-4);
  auto sharded_adapter = FromPretrained(base, options);
  ASSERT_TRUE(sharded_adapter.ok()) << sharded_adapter.status();
  ASSERT_TRUE(LoadPeftAdapter(**sharded_adapter, sharded.output_dir + "/adapter", nullptr).ok());
  EXPECT_LT((LogitsOf(**sharded_adapter) - with_adapter).abs().max().item<double>(), 1e-4);
}

// Phi-3's packed q | k | v with one KV head and packed gate | up: B is cut
// per packed part (the KV rows replicated) at TP=2, equal to one process.
TEST(Lora, PackedProjectionsUnderTensorParallel) {
  const std::string config = train_testing::ModelConfigFile("lora_phi3", R"({
  "architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "vocab_size": 256,
  "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
  "num_attention_heads": 4, "num_key_value_heads": 1, "max_position_embeddings": 128,
  "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "torch_dtype": "float32"})");
  auto run = [&](const std::string& name) {
    TrainConfig c = Tiny(name);
    c.model_config = config;
    c.lora_r = 4;
    c.lora_alpha = 8;
    c.lora_target_modules = {"all-linear"};
    c.lr = 1e-2;
    c.steps = 5;
    c.checkpoint_export = false;
    return c;
  };
  const std::vector<double> want = RunAndGetLosses(1, run("lora_phi3_one"));
  TrainConfig tp = run("lora_phi3_tp2");
  tp.tp = 2;
  ExpectSameLosses(want, RunAndGetLosses(2, tp), 5, kStepTolerance);
}

}  // namespace
}  // namespace weft
