// Sharded data parallelism (parallel.dp_shard, FSDP2's semantics) end to end
// on CPU/Gloo with the tiny byte-level Llama: dp_shard=2 and 4, HSDP 2 x 2
// and TP=2 x dp_shard=2 reproduce one process step by step; each rank holds
// 1/dp_shard of the parameters; bf16 trains; activation checkpointing
// changes nothing; a checkpoint saved at dp_shard=2 resumes at dp=1, tp=2
// and dp_shard=4 exactly.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "base/text_file.h"
#include "checkpoint/safetensors.h"
#include "gtest/gtest.h"
#include "trainer/checkpointing.h"
#include "trainer/train_config.h"
#include "trainer/train_testing.h"

namespace weft {
namespace {

namespace fs = std::filesystem;
using train_testing::ExpectSameLosses;
using train_testing::kStepTolerance;
using train_testing::ModelConfigFile;
using train_testing::RunAndGetLosses;
using train_testing::Tiny;
using train_testing::TrainError;

constexpr size_t kSteps = 12;
// What the process itself adds while resharding, whatever the model's size
// (measured 1.0-1.8 MB for a 0.43 MB model and 1.8-2.9 MB for a 13 MB one:
// headers, index maps, first use of threads and allocator arenas). A rank
// that assembled whole tensors would exceed it by the model's size.
constexpr double kMeasureSlackMb = 4.0;

TrainConfig Sharded(const std::string& name, int dp_shard) {
  TrainConfig c = Tiny(name);
  c.steps = kSteps;
  c.dp_shard = dp_shard;
  c.checkpoint_export = false;
  return c;
}

std::vector<double> OneProcess(const std::string& name) {
  TrainConfig c = Tiny(name);
  c.steps = kSteps;
  c.checkpoint_export = false;
  return RunAndGetLosses(1, c);
}

TEST(FullyShard, ShardedDataParallelEqualsOneProcess) {
  const std::vector<double> want = OneProcess("fsdp_ref");
  TrainConfig two = Sharded("fsdp2", 2);
  const std::vector<double> sharded = RunAndGetLosses(2, two);
  ExpectSameLosses(want, sharded, kSteps, kStepTolerance);
  // Each rank holds half the parameters (0.11M in all).
  const std::string log = ReadTextFile(two.output_dir + "/log.txt").value_or("");
  EXPECT_NE(log.find("0.11M parameters (0.05M on this rank); cpu, fp32, plan none; mesh dp 1 x "
                     "dp_shard 2 x tp 1"),
            std::string::npos)
      << log;
  TrainConfig four = Sharded("fsdp4", 4);
  ExpectSameLosses(want, RunAndGetLosses(4, four), kSteps, kStepTolerance);
  TrainConfig dp = Tiny("fsdp_dp2");
  dp.steps = kSteps;
  dp.dp = 2;
  dp.checkpoint_export = false;
  ExpectSameLosses(RunAndGetLosses(2, dp), sharded, kSteps, kStepTolerance);
}

TEST(FullyShard, HsdpAndTensorParallelEqualOneProcess) {
  const std::vector<double> want = OneProcess("fsdp_ref_mesh");
  TrainConfig hsdp = Sharded("hsdp", 2);
  hsdp.dp = 2;  // 2 replicas x 2 shards
  ExpectSameLosses(want, RunAndGetLosses(4, hsdp), kSteps, kStepTolerance);
  TrainConfig tp = Sharded("fsdp_tp2", 2);
  tp.tp = 2;
  ExpectSameLosses(want, RunAndGetLosses(4, tp), kSteps, kStepTolerance);
}

// Each pipeline stage sharded over dp_shard: PP=2 x dp_shard=2 on 4 ranks.
TEST(FullyShard, InsidePipelineStagesEqualsOneProcess) {
  const std::vector<double> want = [] {
    TrainConfig c = Tiny("fsdp_pp_ref");
    c.steps = kSteps;
    c.micro_batch = 2;
    c.checkpoint_export = false;
    return RunAndGetLosses(1, c);
  }();
  for (const char* schedule : {"1f1b", "gpipe"}) {
    SCOPED_TRACE(schedule);
    TrainConfig c = Sharded(absl::StrCat("fsdp_pp2_", schedule), 2);
    c.pp = 2;
    c.pp_schedule = schedule;
    c.pp_microbatches = 2;  // 2 micro-batches of 2 per data-parallel rank
    ExpectSameLosses(want, RunAndGetLosses(4, c), kSteps, kStepTolerance);
  }
  // Refused with the configuration, before any rank starts.
  TrainConfig zb = Sharded("fsdp_pp2_zb", 2);
  zb.pp = 2;
  zb.pp_schedule = "zb1p";
  auto parsed = ParseTrainConfig(zb.ToYaml(), "zb.yaml");
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().message(),
            "zb.yaml: parallel.pp_schedule zb1p with parallel.dp_shard 2 is not supported yet "
            "(zero-bubble defers weight gradients past the reduce-scatter; expected gpipe, 1f1b "
            "or interleaved_1f1b with dp_shard)");
}

// Fine-tuning a Hugging Face checkpoint: each rank reads only its pieces
// (ReadPieces), with TP (pieces of tp slices) and inside pipeline stages.
TEST(FullyShard, FromAHuggingFaceCheckpointEqualsOneProcess) {
  TrainConfig base = Tiny("fsdp_hf_base");
  base.steps = 2;
  ASSERT_EQ(RunAndGetLosses(1, base).size(), 2u);
  auto tuned = [&](const std::string& name) {
    TrainConfig c = Sharded(name, 1);
    c.model_config.clear();
    c.model_pretrained = base.output_dir + "/hf";
    c.steps = 6;
    c.micro_batch = 2;
    return c;
  };
  const std::vector<double> want = RunAndGetLosses(1, tuned("fsdp_hf_ref"));
  TrainConfig tp = tuned("fsdp_hf_tp2");
  tp.dp_shard = 2;
  tp.tp = 2;
  ExpectSameLosses(want, RunAndGetLosses(4, tp), 6, kStepTolerance);
  TrainConfig pp = tuned("fsdp_hf_pp2");
  pp.dp_shard = 2;
  pp.pp = 2;
  pp.pp_microbatches = 2;
  ExpectSameLosses(want, RunAndGetLosses(4, pp), 6, kStepTolerance);
  TrainConfig three = tuned("fsdp_hf_3");  // uneven pieces
  three.dp_shard = 3;
  three.global_batch = 6;
  TrainConfig three_ref = tuned("fsdp_hf_3_ref");
  three_ref.global_batch = 6;
  ExpectSameLosses(RunAndGetLosses(1, three_ref), RunAndGetLosses(3, three), 6, kStepTolerance);
}

TEST(FullyShard, ReshardingAndActivationCheckpointingChangeNothingAndBf16Trains) {
  TrainConfig plain = Sharded("fsdp_ac_off", 2), checkpointed = Sharded("fsdp_ac_on", 2);
  checkpointed.activation_checkpointing = true;
  const std::vector<double> resharded = RunAndGetLosses(2, plain);
  ExpectSameLosses(resharded, RunAndGetLosses(2, checkpointed), kSteps, 0.0);
  // Layers kept gathered from forward to backward: the same bits.
  TrainConfig kept = Sharded("fsdp_kept", 2);
  kept.reshard_after_forward = false;
  ExpectSameLosses(resharded, RunAndGetLosses(2, kept), kSteps, 0.0);
  TrainConfig bf16 = Sharded("fsdp_bf16", 2);
  bf16.precision = "bf16";
  bf16.steps = 30;
  std::vector<double> losses = RunAndGetLosses(2, bf16);
  ASSERT_EQ(losses.size(), 30u);
  EXPECT_LT(losses.back(), losses[0] - 1.5);
}

TEST(FullyShard, CheckpointsResumeOnAnotherMesh) {
  TrainConfig c = Sharded("fsdp_resume", 2);
  c.steps = 8;
  c.checkpoint_every = 4;
  c.checkpoint_keep = 3;
  c.decay = "constant";
  c.checkpoint_export = true;
  const std::vector<double> want = RunAndGetLosses(2, c);
  ASSERT_EQ(want.size(), 8u);
  EXPECT_TRUE(fs::exists(c.output_dir + "/hf/model.safetensors"));
  // Every rank wrote its own pieces: two files of about half the model each.
  const std::string step4 = CheckpointDir(c.output_dir, 4);
  for (const char* file : {"/model-tp00000-of-00001-shard00000-of-00002.safetensors",
                           "/model-tp00000-of-00001-shard00001-of-00002.safetensors"}) {
    ASSERT_TRUE(fs::exists(step4 + file)) << file;
    EXPECT_LT(fs::file_size(step4 + file), 300000u) << file;  // the whole model is 0.43 MB
    EXPECT_GT(fs::file_size(step4 + file), 180000u) << file;
  }
  // And its own optimizer state: AdamW's moments of its pieces only.
  for (int r = 0; r < 2; ++r) {
    auto opt = SafetensorsFile::Open(
        absl::StrCat(step4, "/optimizer-tp00000-of-00001-shard0000", r, "-of-00002.safetensors"));
    ASSERT_TRUE(opt.ok()) << opt.status();
    const TensorEntry* embed = (*opt)->Find("exp_avg.model.embed_tokens.weight");
    ASSERT_NE(embed, nullptr);
    EXPECT_EQ(embed->shape, (std::vector<int64_t>{128, 64})) << "rank " << r;  // of [256, 64]
    int64_t numel = 0;
    for (const TensorEntry& e : (*opt)->tensors()) {
      if (e.name.rfind("exp_avg.", 0) == 0) numel += e.nbytes() / 4;
    }
    EXPECT_LT(numel, 60000) << "rank " << r;  // the model has 0.11M parameters
    EXPECT_GT(numel, 50000) << "rank " << r;
  }
  for (auto [ranks, dp_shard, tp] : {std::tuple<int, int, int>{1, 1, 1}, {2, 1, 2}, {4, 4, 1}}) {
    SCOPED_TRACE(absl::StrCat("dp_shard ", dp_shard, " tp ", tp));
    fs::remove_all(CheckpointDir(c.output_dir, 8));
    TrainConfig next = c;
    next.dp_shard = dp_shard;
    next.tp = tp;
    next.resume = true;
    next.checkpoint_export = false;
    std::vector<double> got = RunAndGetLosses(ranks, next);
    ASSERT_EQ(got.size(), 4u);
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_NEAR(got[i], want[i + 4], kStepTolerance) << "step " << i + 5;
    }
  }
}

// Resharding's peak memory, measured on every rank (VmHWM, PeakRssMeter), stays
// within what the rank gets plus the largest tensor, for a 3.3M-parameter
// Llama (40 MB of checkpoint with the optimizer state) saved at dp_shard 2.
TEST(FullyShard, ReshardingPeakMemoryIsTheRanksSlicesPlusTheLargestTensor) {
  const std::string config = ModelConfigFile("fsdp_memory_model", R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 256,
  "hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4,
  "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
  "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "torch_dtype": "float32"})");
  TrainConfig c = Sharded("fsdp_memory", 2);
  c.model_config = config;
  c.steps = 2;
  c.checkpoint_every = 2;
  ASSERT_EQ(RunAndGetLosses(2, c).size(), 2u);
  for (auto [ranks, dp_shard, tp] : {std::tuple<int, int, int>{1, 1, 1}, {2, 1, 2}, {4, 4, 1}}) {
    SCOPED_TRACE(absl::StrCat("dp_shard ", dp_shard, " tp ", tp));
    fs::remove_all(CheckpointDir(c.output_dir, 3));
    TrainConfig next = c;
    next.dp_shard = dp_shard;
    next.tp = tp;
    next.steps = 3;
    next.checkpoint_every = 100;
    next.resume = true;
    ASSERT_EQ(RunAndGetLosses(ranks, next).size(), 1u);
    // No rank's peak memory while resharding exceeded what it got plus the
    // largest tensor (measured: VmHWM, see PeakRssMeter).
    const std::string log = ReadTextFile(next.output_dir + "/log.txt").value_or("");
    const size_t at = log.rfind("[train] resharding's peak memory");
    ASSERT_NE(at, std::string::npos) << log;
    const std::string line = log.substr(at, log.find('\n', at) - at);
    int rank = 0;
    double peak = 0, slices = 0, largest = 0, bound = 0;
    ASSERT_EQ(std::sscanf(line.c_str(),
                          "[train] resharding's peak memory, highest over its bound on rank %d: "
                          "+%lf MB (its slices %lf MB + the largest tensor %lf MB = %lf MB)",
                          &rank, &peak, &slices, &largest, &bound),
              5)
        << line;
    std::cout << line << "\n";
    EXPECT_GT(slices, 0) << line;
    EXPECT_LE(peak, bound + kMeasureSlackMb) << line;
  }
}

TEST(FullyShard, ConfigurationErrorsAreOneLine) {
  TrainConfig c = Sharded("fsdp_errors", 2);
  c.steps = 1;
  EXPECT_EQ(TrainError(3, c), "mesh dp(1) * dp_shard(2) * tp(1) = 2 != WORLD_SIZE 3");
  c.global_batch = 7;
  EXPECT_EQ(TrainError(2, c), "train.global_batch 7 is not divisible by dp 1 x dp_shard 2");
}

}  // namespace
}  // namespace weft
