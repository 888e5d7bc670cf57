// Pipeline parallelism end to end on CPU/Gloo with tiny byte-level Llamas:
// PP=2 and PP=4 with every schedule, an uneven split, a tied embedding,
// PP x TP and PP x DP reproduce one process's losses step by step; a
// checkpoint saved at PP=2 resumes at PP=1 and at PP=2 x TP=2 exactly; the
// export of a pipelined run equals one process's; configuration errors are
// one line, before anything is allocated.
#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "base/text_file.h"
#include "checkpoint/safetensors.h"
#include "gtest/gtest.h"
#include "trainer/checkpointing.h"
#include "trainer/train_testing.h"

namespace weft {
namespace {

namespace fs = std::filesystem;
using train_testing::ExpectSameLosses;
using train_testing::kStepTolerance;
using train_testing::RunAndGetLosses;
using train_testing::TempDir;
using train_testing::Tiny;
using train_testing::TrainError;

constexpr size_t kSteps = 20;

TrainConfig Pipelined(const std::string& name, int layers, int pp, const std::string& schedule,
                      int microbatches) {
  TrainConfig c = Tiny(name, layers);
  c.steps = kSteps;
  c.pp = pp;
  c.pp_schedule = schedule;
  c.pp_microbatches = microbatches;
  c.checkpoint_export = false;
  return c;
}

// The reference: one process, the same global batch in the same number of
// micro-batches (gradient accumulation).
std::vector<double> OneProcess(const std::string& name, int layers, int microbatches) {
  TrainConfig c = Tiny(name, layers);
  c.steps = kSteps;
  c.micro_batch = c.global_batch / microbatches;
  c.checkpoint_export = false;
  return RunAndGetLosses(1, c);
}

TEST(Pipeline, TwoStagesEqualOneProcessWithEverySchedule) {
  const std::vector<double> want = OneProcess("pp_ref4", 4, 4);
  for (const char* schedule : {"gpipe", "1f1b", "interleaved_1f1b", "zb1p"}) {
    SCOPED_TRACE(schedule);
    TrainConfig c = Pipelined(absl::StrCat("pp2_", schedule), 4, 2, schedule, 4);
    ExpectSameLosses(want, RunAndGetLosses(2, c), kSteps, kStepTolerance);
    if (std::string(schedule) == "interleaved_1f1b") {
      // Four stages, two per rank, in the header.
      const std::string log = ReadTextFile(c.output_dir + "/log.txt").value_or("");
      EXPECT_NE(log.find("[train] pipeline pp 2, schedule interleaved_1f1b, 4 stages (2 per rank), "
                         "4 micro-batches of 2"),
                std::string::npos)
          << log;
    }
  }
}

TEST(Pipeline, FourStagesEqualOneProcess) {
  const std::vector<double> want = OneProcess("pp_ref4_8", 4, 8);
  for (const char* schedule : {"gpipe", "1f1b", "zb1p"}) {
    SCOPED_TRACE(schedule);
    TrainConfig c = Pipelined(absl::StrCat("pp4_", schedule), 4, 4, schedule, 8);
    ExpectSameLosses(want, RunAndGetLosses(4, c), kSteps, kStepTolerance);
  }
}

// Interleaved at PP=4: 8 stages of a 6-layer model, one unit each (the
// embedding, six layers, the norm with the head), two per rank.
TEST(Pipeline, FourRanksInterleavedEqualOneProcess) {
  const std::vector<double> want = OneProcess("pp_ref6_8", 6, 8);
  TrainConfig c = Pipelined("pp4_interleaved", 6, 4, "interleaved_1f1b", 8);
  ExpectSameLosses(want, RunAndGetLosses(4, c), kSteps, kStepTolerance);
  const std::string log = ReadTextFile(c.output_dir + "/log.txt").value_or("");
  EXPECT_NE(log.find("stages 0@0: model.embed_tokens; 1@1: model.layers.0; 2@2: model.layers.1; "
                     "3@3: model.layers.2; 4@0: model.layers.3; 5@1: model.layers.4; 6@2: "
                     "model.layers.5; 7@3: model.norm..lm_head"),
            std::string::npos)
      << log;
}

TEST(Pipeline, AnUnevenSplitEqualsOneProcess) {
  // 3 layers on 2 stages: the embedding and 2 layers, then 1 layer, the norm and the head.
  const std::vector<double> want = OneProcess("pp_ref3", 3, 2);
  TrainConfig c = Pipelined("pp2_uneven", 3, 2, "1f1b", 2);
  ExpectSameLosses(want, RunAndGetLosses(2, c), kSteps, kStepTolerance);
  const std::string log = ReadTextFile(c.output_dir + "/log.txt").value_or("");
  EXPECT_NE(log.find("stages 0@0: model.embed_tokens..model.layers.1; 1@1: "
                     "model.layers.2..lm_head"),
            std::string::npos)
      << log;
}

// A tied model (Llama 3.2 style): the last stage holds a copy of the
// embedding; the two gradients are summed each step; one tensor is saved.
TEST(Pipeline, TiedEmbeddingsEqualOneProcess) {
  const std::string dir = TempDir() + "/tied_fixture";
  fs::create_directories(dir);
  std::ofstream(dir + "/config.json") << R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 256,
  "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
  "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
  "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "torch_dtype": "float32",
  "tie_word_embeddings": true})";
  TrainConfig one = Tiny("pp_tied_ref");
  one.model_config = dir + "/config.json";
  one.steps = kSteps;
  one.micro_batch = 4;
  TrainConfig two = one;
  two.output_dir = TempDir() + "/pp_tied";
  two.micro_batch = 0;
  two.pp = 2;
  two.pp_microbatches = 2;
  ExpectSameLosses(RunAndGetLosses(1, one), RunAndGetLosses(2, two), kSteps, kStepTolerance);
  // The checkpoint and the export hold the embedding once, no lm_head.
  for (const std::string& file : {CheckpointDir(two.output_dir, kSteps) +
                                      "/model-pp00001-of-00002-tp00000-of-00001.safetensors",
                                  two.output_dir + "/hf/model.safetensors"}) {
    auto f = SafetensorsFile::Open(file);
    ASSERT_TRUE(f.ok()) << f.status();
    for (const TensorEntry& e : (*f)->tensors()) EXPECT_NE(e.name, "lm_head.weight") << file;
  }
  auto a = SafetensorsFile::Open(one.output_dir + "/hf/model.safetensors");
  auto b = SafetensorsFile::Open(two.output_dir + "/hf/model.safetensors");
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ((*a)->tensors().size(), (*b)->tensors().size());
  for (const TensorEntry& e : (*a)->tensors()) {
    EXPECT_TRUE(at::allclose((*a)->Get(e), (*b)->Get(e.name), 1e-4, 1e-5)) << e.name;
  }
}

TEST(Pipeline, TimesTensorAndDataParallelEqualOneProcess) {
  const std::vector<double> want = OneProcess("pp_ref_mesh", 2, 4);
  TrainConfig tp = Pipelined("pp2_tp2", 2, 2, "1f1b", 4);
  tp.tp = 2;
  tp.activation_checkpointing = true;  // recomputes inside the stages' backward
  ExpectSameLosses(want, RunAndGetLosses(4, tp), kSteps, kStepTolerance);
  // The zero-bubble schedule defers weight gradients past TP's hooks.
  TrainConfig zb = Pipelined("pp2_tp2_zb1p", 2, 2, "zb1p", 4);
  zb.tp = 2;
  ExpectSameLosses(want, RunAndGetLosses(4, zb), kSteps, kStepTolerance);
  TrainConfig dp = Pipelined("pp2_dp2", 2, 2, "1f1b", 2);  // 2 micro-batches of 2 per dp rank
  dp.dp = 2;
  ExpectSameLosses(want, RunAndGetLosses(4, dp), kSteps, kStepTolerance);
  const std::string log = ReadTextFile(dp.output_dir + "/log.txt").value_or("");
  EXPECT_NE(log.find("mesh pp 2 x dp 2 x tp 1"), std::string::npos) << log;
}

// Saved at PP=2, resumed at PP=1, then at PP=4, and at PP=2 x TP=2: the
// next losses are the uninterrupted run's; the export gathers every stage.
TEST(Pipeline, CheckpointsResumeAtAnotherPipelineDegree) {
  TrainConfig c = Pipelined("pp_resume", 2, 2, "1f1b", 4);
  c.steps = 12;
  c.checkpoint_every = 4;
  c.checkpoint_keep = 5;
  c.checkpoint_export = true;
  c.decay = "constant";  // the PP=1 leg stops at step 8: the same lr at every step
  const std::vector<double> want = RunAndGetLosses(2, c);
  ASSERT_EQ(want.size(), 12u);
  EXPECT_TRUE(fs::exists(CheckpointDir(c.output_dir, 4) +
                         "/model-pp00000-of-00002-tp00000-of-00001.safetensors"));
  auto exported = SafetensorsFile::Open(c.output_dir + "/hf/model.safetensors");
  ASSERT_TRUE(exported.ok()) << exported.status();
  EXPECT_EQ((*exported)->tensors().size(), 21u);  // 2 x 9 per layer + embed + norm + head

  // PP=2 -> PP=1 from step 4 to 8.
  fs::remove_all(CheckpointDir(c.output_dir, 12));
  fs::remove_all(CheckpointDir(c.output_dir, 8));
  TrainConfig one = c;
  one.steps = 8;
  one.pp = 1;
  one.pp_microbatches = 0;
  one.micro_batch = 2;
  one.resume = true;
  one.checkpoint_export = false;
  std::vector<double> got = RunAndGetLosses(1, one);
  ASSERT_EQ(got.size(), 4u);
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_NEAR(got[i], want[i + 4], kStepTolerance) << "pp 1, step " << i + 5;
  }
  // PP=1 -> PP=4 (the embedding, a layer, a layer, the head) from 8 to 12.
  TrainConfig four = c;
  four.pp = 4;
  four.resume = true;
  four.checkpoint_export = false;
  got = RunAndGetLosses(4, four);
  ASSERT_EQ(got.size(), 4u);
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_NEAR(got[i], want[i + 8], kStepTolerance) << "pp 4, step " << i + 9;
  }
  // PP=4's step 12 is PP=2's too; PP=2 x TP=2 from step 8 again.
  fs::remove_all(CheckpointDir(c.output_dir, 12));
  TrainConfig mesh = c;
  mesh.tp = 2;
  mesh.resume = true;
  mesh.checkpoint_export = false;
  got = RunAndGetLosses(4, mesh);
  ASSERT_EQ(got.size(), 4u);
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_NEAR(got[i], want[i + 8], kStepTolerance) << "pp 2 x tp 2, step " << i + 9;
  }
}

// Greedy samples before and after training go through the stages (two per
// rank here, and a KV cache advanced once per token): the same text as one
// process's.
TEST(Pipeline, SamplesThroughTheStagesEqualOneProcess) {
  auto sample = [](const std::string& log) {
    const size_t at = log.find("[train] sample after training:\n");
    return at == std::string::npos ? std::string("no sample in: ") + log : log.substr(at);
  };
  TrainConfig one = Tiny("pp_sample_ref", 4);
  one.steps = 6;
  one.micro_batch = 2;
  one.sample_prompt = "The quick";
  one.sample_max_new_tokens = 24;
  TrainConfig two = Pipelined("pp_sample", 4, 2, "interleaved_1f1b", 4);
  two.steps = 6;
  two.sample_prompt = one.sample_prompt;
  two.sample_max_new_tokens = one.sample_max_new_tokens;
  ASSERT_EQ(RunAndGetLosses(1, one).size(), 6u);
  ASSERT_EQ(RunAndGetLosses(2, two).size(), 6u);
  const std::string a = ReadTextFile(one.output_dir + "/log.txt").value_or("");
  const std::string b = ReadTextFile(two.output_dir + "/log.txt").value_or("");
  EXPECT_EQ(sample(a), sample(b));
  EXPECT_NE(b.find("[train] sample before training:\nThe quick"), std::string::npos) << b;
}

// bf16 (fp32 master weights) through the stages: the loss falls as at PP=1.
TEST(Pipeline, Bf16LossDecreases) {
  TrainConfig c = Pipelined("pp2_bf16", 2, 2, "1f1b", 2);
  c.precision = "bf16";
  c.steps = 30;
  std::vector<double> losses = RunAndGetLosses(2, c);
  ASSERT_EQ(losses.size(), 30u);
  EXPECT_LT(losses.back(), losses[0] - 1.5);
}

TEST(Pipeline, ConfigurationErrorsAreOneLine) {
  TrainConfig c = Pipelined("pp_errors", 2, 2, "1f1b", 2);
  c.steps = 1;
  c.pp = 4;  // 4 stages on 2 layers + embedding + head is fine; 8 is not
  c.pp_schedule = "interleaved_1f1b";
  c.pp_microbatches = 4;
  EXPECT_EQ(TrainError(4, c),
            "pipeline: 8 stages for a model of 2 layers (expected at most 4: the layers plus "
            "first_stage_less_layers 1 and last_stage_less_layers 1)");
  c = Pipelined("pp_errors", 2, 2, "1f1b", 2);
  c.steps = 1;
  c.tp = 2;
  EXPECT_EQ(TrainError(3, c), "mesh pp(2) * dp(1) * tp(2) = 4 != WORLD_SIZE 3");
  c.tp = 1;
  c.pp_microbatches = 3;
  EXPECT_EQ(TrainError(2, c),
            "train.global_batch 8 is not divisible by parallel.pp_microbatches 3 x dp 1 (expected "
            "whole micro-batches on every rank)");
  c.pp_microbatches = 2;
  c.pp_schedule = "interleaved_1f1b";
  c.pp_microbatches = 1;
  const std::string few = TrainError(2, c);
  EXPECT_EQ(few.rfind("parallel.pp_schedule interleaved_1f1b: ", 0), 0u) << few;
  EXPECT_NE(few.find("micro-batch"), std::string::npos) << few;
  c.pp_schedule = "1f1b";
  c.pp_microbatches = 2;
  c.pp_schedule = "2f2b";
  const std::string unknown = TrainError(2, c);
  EXPECT_EQ(unknown.rfind("parallel.pp_schedule 2f2b: ", 0), 0u) << unknown;
  c.pp_schedule = "1f1b";
  const std::string plan = TempDir() + "/pp_errors_plan.yaml";
  std::ofstream(plan) << "pp_plan:\n  model.embed_tokens: [[input_ids], [inputs_embeds]]\n"
                         "  model.layers: [[hidden_states], [hidden_states]]\n"
                         "  model.final_norm: [[hidden_states], [hidden_states]]\n"
                         "  lm_head: [[hidden_states], [logits]]\n";
  c.pp_plan = plan;
  EXPECT_EQ(TrainError(2, c),
            "pp_plan key 'model.final_norm' matches no module of LlamaForCausalLM (expected a "
            "piece of the model in forward order, e.g. model.layers)");
  std::ofstream(plan) << "pp_plan:\n  model.embed_tokens: [[input_ids], [inputs_embeds]]\n"
                         "  model.layers: [[hidden_states], [hidden_states]]\n"
                         "  model.norm: [[hidden_states], [hidden_states]]\n"
                         "  lm_head: [[hidden_states], [logits]]\n"
                         "pp_split:\n  stages: [[model.embed_tokens, model.layers.0],"
                         " [model.norm, lm_head]]\n";
  EXPECT_EQ(TrainError(2, c),
            "pp_split.stages: 'model.layers.1' is in no stage (expected every module once, in "
            "forward order)");
}

}  // namespace
}  // namespace weft
