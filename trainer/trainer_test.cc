// The trainer end to end on CPU/Gloo with a tiny byte-level Llama: the loss
// decreases; TP=2 and DP=2 match one process step by step; a kill -9 during
// a save leaves the previous checkpoint, and resuming from it is exact;
// run-time errors are one line.
#include "trainer/trainer.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/text_file.h"
#include "checkpoint/safetensors.h"
#include "gtest/gtest.h"
#include "models/pretrained.h"
#include "tests/multiprocess.h"
#include "trainer/checkpointing.h"
#include "trainer/train_config.h"
#include "trainer/train_testing.h"

namespace weft {
namespace {

namespace fs = std::filesystem;
using testing::RankResults;
using testing::RunOptions;
using testing::RunRanks;
using train_testing::ExpectSameLosses;
using train_testing::Fixture;
using train_testing::kStepTolerance;
using train_testing::ModelConfigFile;
using train_testing::RunAndGetLosses;
using train_testing::RunJob;
using train_testing::Tiny;
using train_testing::TrainError;

TEST(Trainer, LossDecreases) {
  TrainConfig c = Tiny("decreases");
  c.steps = 40;
  std::vector<double> losses = RunAndGetLosses(1, c);
  ASSERT_EQ(losses.size(), 40u);
  EXPECT_NEAR(losses[0], std::log(256.0), 0.3);  // initialised as transformers: near uniform
  double last = 0;
  for (size_t i = 35; i < 40; ++i) last += losses[i] / 5;
  EXPECT_LT(last, losses[0] - 2.0) << "first " << losses[0] << " last " << last;
  // The files a user expects.
  EXPECT_TRUE(fs::exists(c.output_dir + "/metrics.jsonl"));
  EXPECT_TRUE(fs::exists(c.output_dir + "/loss.svg"));
  EXPECT_TRUE(fs::exists(c.output_dir + "/hf/config.json"));
  EXPECT_TRUE(fs::exists(c.output_dir + "/hf/model.safetensors"));
  EXPECT_TRUE(fs::exists(CheckpointDir(c.output_dir, 40) + "/trainer_state.json"));
}

// The header says what runs where: total and per-rank parameters, device,
// precision, plan, the mesh, tokens per step and the epochs covered.
TEST(Trainer, TheHeaderNamesTheRun) {
  TrainConfig c = Tiny("header");
  c.tp = 2;
  c.steps = 2;
  ASSERT_EQ(RunAndGetLosses(2, c).size(), 2u);
  const std::string log = ReadTextFile(c.output_dir + "/log.txt").value_or("");
  EXPECT_NE(log.find("[train] LlamaForCausalLM, 2 layers, 0.11M parameters (0.06M on this rank); "
                     "cpu, fp32, plan auto; mesh dp 1 x tp 2; global batch 8 x 32 = 256 tokens "
                     "per step (1 micro-batches of 8 per rank); 2 steps = 0.09 epochs\n"),
            std::string::npos)
      << log;
}

TEST(Trainer, Bf16LossDecreases) {
  TrainConfig c = Tiny("bf16");
  c.steps = 30;
  c.precision = "bf16";
  std::vector<double> losses = RunAndGetLosses(1, c);
  ASSERT_EQ(losses.size(), 30u);
  EXPECT_LT(losses.back(), losses[0] - 1.5);
}

TEST(Trainer, TensorParallelMatchesOneProcessStepByStep) {
  TrainConfig one = Tiny("tp1"), two = Tiny("tp2");
  two.tp = 2;
  std::vector<double> a = RunAndGetLosses(1, one), b = RunAndGetLosses(2, two);
  ExpectSameLosses(a, b, 8, kStepTolerance);
}

TEST(Trainer, TensorParallelWithLossParallelAndMicroBatches) {
  TrainConfig one = Tiny("tp1_micro"), two = Tiny("tp2_loss_parallel");
  one.micro_batch = 2;  // 4 accumulated micro-batches
  two.tp = 2;
  two.loss_parallel = true;
  std::vector<double> a = RunAndGetLosses(1, one), b = RunAndGetLosses(2, two);
  ExpectSameLosses(a, b, 8, kStepTolerance);
}

// Tied embeddings (Llama 3.2, Qwen2.5 small, Gemma) under TP with the auto
// plan: one [V/tp, H] shard for the embedding and the head (Megatron's
// layout), with and without loss_parallel and inside pipeline stages, equal
// one process; the checkpoint resumes at tp 1 and the export holds the tensor
// once, as transformers writes it.
TEST(Trainer, TiedEmbeddingsUnderTensorParallelMatchOneProcess) {
  const std::string config = ModelConfigFile("tied_model", R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 256,
  "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
  "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
  "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "torch_dtype": "float32",
  "tie_word_embeddings": true})");
  auto tied = [&](const std::string& name) {
    TrainConfig c = Tiny(name);
    c.model_config = config;
    c.steps = 6;
    return c;
  };
  TrainConfig one = tied("tied_tp1");
  const std::vector<double> want = RunAndGetLosses(1, one);
  TrainConfig two = tied("tied_tp2");
  two.tp = 2;
  two.checkpoint_every = 3;
  ExpectSameLosses(want, RunAndGetLosses(2, two), 6, kStepTolerance);
  TrainConfig loss_parallel = tied("tied_tp2_loss_parallel");
  loss_parallel.tp = 2;
  loss_parallel.loss_parallel = true;
  ExpectSameLosses(want, RunAndGetLosses(2, loss_parallel), 6, kStepTolerance);
  TrainConfig fsdp = tied("tied_dp_shard2");
  fsdp.dp_shard = 2;
  {
    SCOPED_TRACE("dp_shard 2");
    ExpectSameLosses(want, RunAndGetLosses(2, fsdp), 6, kStepTolerance);
  }
  TrainConfig pp = tied("tied_pp2_tp2");
  pp.tp = 2;
  pp.pp = 2;
  pp.micro_batch = 2;
  pp.pp_microbatches = 4;
  ExpectSameLosses(want, RunAndGetLosses(4, pp), 6, kStepTolerance);
  // Saved at tp 2, resumed at tp 1 from step 3.
  fs::remove_all(CheckpointDir(two.output_dir, 6));
  TrainConfig resumed = two;
  resumed.tp = 1;
  resumed.resume = true;
  std::vector<double> got = RunAndGetLosses(1, resumed);
  ASSERT_EQ(got.size(), 3u);
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i + 3], kStepTolerance);
  auto exported = SafetensorsFile::Open(two.output_dir + "/hf/model.safetensors");
  ASSERT_TRUE(exported.ok()) << exported.status();
  EXPECT_EQ((*exported)->Find("lm_head.weight"), nullptr);
  ASSERT_NE((*exported)->Find("model.embed_tokens.weight"), nullptr);
  EXPECT_EQ((*exported)->Find("model.embed_tokens.weight")->shape, (std::vector<int64_t>{256, 64}));
}

// The architectures beyond Llama train under the same parallelisms: the MoEs
// (Qwen3-MoE, Mixtral, experts fused), gpt-oss (sinks, biased experts) and
// Gemma 2 (scaled, tied embeddings; soft-capping) from transformers'
// initialisation, at TP=2 with their auto plans, at dp_shard=2 (fused experts
// cut on dim 0) and at PP=2, equal one process step by step.
TEST(Trainer, NewArchitecturesUnderTensorPipelineAndShardedDataParallelMatchOneProcess) {
  const std::map<std::string, std::string> configs = {
      {"qwen3_moe", R"({"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
        "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
        "norm_topk_prob": true, "mlp_only_layers": [1], "torch_dtype": "float32"})"},
      {"mixtral", R"({"architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
        "vocab_size": 256, "hidden_size": 64, "intermediate_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "num_local_experts": 4,
        "num_experts_per_tok": 2, "torch_dtype": "float32"})"},
      {"gemma2", R"({"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2",
        "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "query_pre_attn_scalar": 16, "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0, "sliding_window": 8, "tie_word_embeddings": true,
        "hidden_activation": "gelu_pytorch_tanh", "torch_dtype": "float32"})"},
      {"gpt_oss", R"({"architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss",
        "vocab_size": 256, "hidden_size": 64, "intermediate_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "sliding_window": 8,
        "layer_types": ["sliding_attention", "full_attention"], "attention_bias": true,
        "num_local_experts": 4, "num_experts_per_tok": 2, "swiglu_limit": 7.0,
        "rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
          "beta_fast": 32.0, "beta_slow": 1.0, "truncate": false,
          "original_max_position_embeddings": 32}, "torch_dtype": "float32"})"}};
  for (const auto& [name, json] : configs) {
    SCOPED_TRACE(name);
    const std::string config = ModelConfigFile("arch_" + name, json);
    auto run = [&](const std::string& out) {
      TrainConfig c = Tiny(out);
      c.model_config = config;
      c.steps = 4;
      c.checkpoint_export = false;
      return c;
    };
    TrainConfig one = run(name + "_one");
    one.checkpoint_export = true;
    const std::vector<double> want = RunAndGetLosses(1, one);
    // The export is written as transformers' save_pretrained writes it (one
    // tensor per expert for Qwen3-MoE) and loads back.
    auto exported = SafetensorsFile::Open(one.output_dir + "/hf/model.safetensors");
    ASSERT_TRUE(exported.ok()) << exported.status();
    const bool per_expert = name != "gpt_oss" && name != "gemma2";  // these are stored fused
    EXPECT_EQ((*exported)->Find("model.layers.0.mlp.experts.gate_up_proj") != nullptr,
              name == "gpt_oss");
    if (name == "qwen3_moe") {
      EXPECT_NE((*exported)->Find("model.layers.0.mlp.experts.3.up_proj.weight"), nullptr);
    }
    if (name == "mixtral") {  // Mixtral's original names, the router renamed back too
      EXPECT_NE((*exported)->Find("model.layers.0.block_sparse_moe.experts.3.w3.weight"), nullptr);
      EXPECT_NE((*exported)->Find("model.layers.1.block_sparse_moe.gate.weight"), nullptr);
      EXPECT_EQ((*exported)->Find("model.layers.1.mlp.gate.weight"), nullptr);
    }
    PretrainedOptions pretrained;
    pretrained.dtype = at::kFloat;
    auto reloaded = FromPretrained(one.output_dir + "/hf", pretrained);
    ASSERT_TRUE(reloaded.ok()) << reloaded.status();
    if (name == "qwen3_moe") {
      EXPECT_TRUE(at::equal(
          (*reloaded)->named_parameters()["model.layers.0.mlp.experts.gate_up_proj"][3].narrow(
              0, 32, 32),
          (*exported)->Get("model.layers.0.mlp.experts.3.up_proj.weight")));
    }
    TrainConfig tp = run(name + "_tp2");
    tp.tp = 2;
    {
      SCOPED_TRACE("tp 2");
      ExpectSameLosses(want, RunAndGetLosses(2, tp), 4, kStepTolerance);
    }
    TrainConfig sharded = run(name + "_dp_shard2");
    sharded.dp_shard = 2;
    {
      SCOPED_TRACE("dp_shard 2");
      ExpectSameLosses(want, RunAndGetLosses(2, sharded), 4, kStepTolerance);
    }
    TrainConfig pipelined = run(name + "_pp2");  // the model's own forward, one stage each
    pipelined.pp = 2;
    pipelined.micro_batch = 2;
    pipelined.pp_microbatches = 4;
    SCOPED_TRACE("pp 2");
    ExpectSameLosses(want, RunAndGetLosses(2, pipelined), 4, kStepTolerance);
  }
}

// Phi-3's packed q | k | v with one KV head: at TP=2 each rank holds its
// query rows and the KV head's rows (replicated), whose gradients are summed
// over the ranks sharing them, also per dp_shard piece; the gradient norm
// counts those rows once (clipping is on at every step here, so a wrong norm
// changes the losses); a checkpoint saved at tp 2 (both ranks save the KV
// rows) resumes at tp 1 and tp 4.
TEST(Trainer, PackedAttentionWithReplicatedKvHeadsMatchesOneProcess) {
  const std::string config = ModelConfigFile("phi3_mqa", R"({
  "architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "vocab_size": 256,
  "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
  "num_attention_heads": 4, "num_key_value_heads": 1, "max_position_embeddings": 128,
  "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "torch_dtype": "float32"})");
  auto run = [&](const std::string& name) {
    TrainConfig c = Tiny(name);
    c.model_config = config;
    c.steps = 6;
    c.grad_clip = 0.05;
    c.checkpoint_export = false;
    return c;
  };
  const std::vector<double> want = RunAndGetLosses(1, run("phi3_mqa_tp1"));
  TrainConfig tp = run("phi3_mqa_tp2");
  tp.tp = 2;
  tp.checkpoint_every = 3;
  {
    SCOPED_TRACE("tp 2");
    ExpectSameLosses(want, RunAndGetLosses(2, tp), 6, kStepTolerance);
  }
  TrainConfig sharded = run("phi3_mqa_tp2_dp_shard2");
  sharded.tp = 2;
  sharded.dp_shard = 2;
  {
    SCOPED_TRACE("tp 2 x dp_shard 2");
    ExpectSameLosses(want, RunAndGetLosses(4, sharded), 6, kStepTolerance);
  }
  for (int resume_tp : {1, 4}) {
    SCOPED_TRACE(::testing::Message() << "resumed at tp " << resume_tp);
    fs::remove_all(CheckpointDir(tp.output_dir, 6));  // from step 3
    TrainConfig resumed = tp;
    resumed.tp = resume_tp;
    resumed.resume = true;
    std::vector<double> got = RunAndGetLosses(resume_tp, resumed);
    ASSERT_EQ(got.size(), 3u);
    for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i + 3], kStepTolerance);
  }
}

TEST(Trainer, DataParallelMatchesOneProcessWithTheWholeBatch) {
  TrainConfig one = Tiny("dp1"), two = Tiny("dp2");
  two.dp = 2;  // each rank gets half of the same global batch of 8
  std::vector<double> a = RunAndGetLosses(1, one), b = RunAndGetLosses(2, two);
  ExpectSameLosses(a, b, 8, kStepTolerance);
}

TEST(Trainer, ActivationCheckpointingChangesNothingButMemory) {
  TrainConfig plain = Tiny("ac_off"), checkpointed = Tiny("ac_on");
  plain.tp = checkpointed.tp = 2;
  checkpointed.activation_checkpointing = true;
  std::vector<double> a = RunAndGetLosses(2, plain), b = RunAndGetLosses(2, checkpointed);
  // The same operations in the same order: equal to the last bit.
  ExpectSameLosses(a, b, 8, 0.0);
}

TEST(Trainer, KillDuringSaveKeepsThePreviousCheckpointAndResumeIsExact) {
  TrainConfig c = Tiny("resume");
  c.tp = 2;
  c.steps = 10;
  c.checkpoint_every = 4;
  c.checkpoint_keep = 3;
  // Uninterrupted reference.
  TrainConfig ref = c;
  ref.output_dir += "_reference";
  std::vector<double> want = RunAndGetLosses(2, ref);
  ASSERT_EQ(want.size(), 10u);
  // Killed (SIGKILL) in the middle of saving step 8.
  RunOptions kill;
  kill.env["WEFT_TEST_KILL_DURING_SAVE"] = "8";
  RankResults killed = RunJob(2, c, kill);
  ASSERT_EQ(killed.exit_codes[0], -9) << killed.Describe();
  // loss.svg is refreshed at every checkpoint, so a killed run has one.
  EXPECT_TRUE(fs::exists(c.output_dir + "/loss.svg"));
  EXPECT_TRUE(fs::exists(CheckpointDir(c.output_dir, 8) + ".tmp"));
  EXPECT_FALSE(fs::exists(CheckpointDir(c.output_dir, 8)));
  auto latest = LatestCheckpoint(c.output_dir);
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(*latest, CheckpointDir(c.output_dir, 4));
  auto loaded = LoadCheckpointDir(*latest, 2, 1, nullptr);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->state.step, 4);
  EXPECT_FALSE(loaded->params.empty());
  // Resume: steps 5..10 equal the uninterrupted run's, exactly.
  c.resume = true;
  std::vector<double> got = RunAndGetLosses(2, c);
  ASSERT_EQ(got.size(), 6u);
  for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], want[i + 4]) << "step " << i + 5;
  EXPECT_FALSE(fs::exists(CheckpointDir(c.output_dir, 8) + ".tmp"));  // cleaned by the next save
  EXPECT_TRUE(fs::exists(CheckpointDir(c.output_dir, 10)));
}

TEST(Trainer, ARestartedAttemptResumesFromTheLatestCheckpoint) {
  TrainConfig c = Tiny("restart");
  c.steps = 6;
  c.checkpoint_every = 2;
  RunOptions kill;
  kill.env["WEFT_TEST_KILL_DURING_SAVE"] = "4";
  RankResults killed = RunJob(1, c, kill);
  ASSERT_EQ(killed.exit_codes[0], -9) << killed.Describe();
  RunOptions restart;
  restart.env["TORCHELASTIC_RESTART_COUNT"] = "1";
  RankResults resumed = RunJob(1, c, restart);
  ASSERT_TRUE(resumed.AllSucceeded()) << resumed.Describe();
  std::ifstream in(c.output_dir + "/losses.txt");
  int64_t first_step = 0;
  ASSERT_TRUE(in >> first_step);
  EXPECT_EQ(first_step, 3);  // steps 1-2 came from the checkpoint of step 2
}

TEST(Trainer, RunTimeErrorsAreOneLine) {
  TrainConfig c = Tiny("errors");
  c.global_batch = 7;
  c.dp = 2;
  EXPECT_EQ(TrainError(2, c), "train.global_batch 7 is not divisible by dp 2");
  c = Tiny("errors");
  c.micro_batch = 3;
  EXPECT_EQ(TrainError(1, c),
            "train.micro_batch 3 does not divide the per-rank batch 8 (global_batch 8 / dp 1)");
  c = Tiny("errors");
  c.tp = 2;
  c.dp = 2;
  EXPECT_EQ(TrainError(2, c), "mesh dp(2) * tp(2) = 4 != WORLD_SIZE 2");
  c = Tiny("errors_resume");
  c.resume = true;
  EXPECT_EQ(TrainError(1, c),
            absl::StrCat("train.resume: no checkpoint under ", c.output_dir, "/checkpoints"));
  c = Tiny("errors_earlier_run");
  c.steps = 1;
  ASSERT_EQ(RunAndGetLosses(1, c).size(), 1u);
  EXPECT_EQ(TrainError(1, c),
            absl::StrCat("output_dir ", c.output_dir, " already holds checkpoints (latest ",
                         CheckpointDir(c.output_dir, 1),
                         "): pass --resume to continue that run, or choose another output_dir"));
  c = Tiny("errors");
  c.sample_prompt = "To be";
  c.sample_max_new_tokens = 1000000;
  EXPECT_EQ(TrainError(1, c),
            "sample.max_new_tokens 1000000 with a prompt of 5 bytes makes 1000005 positions "
            "(expected at most max_position_embeddings 128)");
  c = Tiny("errors_locked");
  {
    // Another run holds the output directory.
    fs::create_directories(c.output_dir);
    const std::string lock = c.output_dir + "/.weft.lock";
    int fd = ::open(lock.c_str(), O_RDWR | O_CREAT, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::flock(fd, LOCK_EX | LOCK_NB), 0);
    EXPECT_EQ(TrainError(2, c),
              absl::StrCat("output_dir ", c.output_dir, " is in use by another run (", lock,
                           " is locked; expected one run per output_dir)"));
    ::close(fd);
  }
  // An output_dir that cannot be made is named, not an internal temporary
  // file inside it.
  c = Tiny("errors_unwritable");
  fs::create_directories(c.output_dir);
  { std::ofstream(c.output_dir + "/file") << "x"; }
  c.output_dir += "/file/run";
  std::ostringstream log;
  EXPECT_EQ(Train(c, log).status().message(),
            absl::StrCat("output_dir ", c.output_dir,
                         " cannot be created: Not a directory (expected a directory this user can "
                         "write, or a path where one can be made)"));
  c = Tiny("errors");
  c.model_config = "/nonexistent/config.json";
  EXPECT_EQ(TrainError(1, c),
            "/nonexistent/config.json: cannot be opened (No such file or directory)");
}

// --resume refuses what would break exact resumption, naming the key, the
// saved and the new value; more steps are fine.
TEST(Trainer, ResumeRefusesAChangedBatchOrData) {
  TrainConfig c = Tiny("resume_changed");
  c.steps = 4;
  c.checkpoint_every = 2;
  ASSERT_EQ(RunAndGetLosses(1, c).size(), 4u);
  TrainConfig changed = c;
  changed.resume = true;
  changed.steps = 6;
  changed.seq_len = 16;
  EXPECT_EQ(TrainError(1, changed),
            absl::StrCat("train.resume: data.seq_len is '16' but ", CheckpointDir(c.output_dir, 4),
                         " was trained with '32' (expected the same value to resume exactly; use "
                         "another output_dir for a new run)"));
  changed = c;
  changed.resume = true;
  changed.steps = 2;
  EXPECT_EQ(TrainError(1, changed),
            absl::StrCat("train.steps 2 is below the step of ", CheckpointDir(c.output_dir, 4),
                         " (4): there is nothing to train (expected more steps)"));
  changed = c;
  changed.resume = true;
  changed.steps = 6;
  changed.lr = 1e-3;  // safe to change
  EXPECT_EQ(RunAndGetLosses(1, changed).size(), 2u);
}

// A step directory without a state file is named (it used to be skipped,
// then deleted by the keep-K rotation), and so is a state file whose step
// disagrees with its directory's (it used to be used); nothing is deleted.
TEST(Trainer, ResumeNamesAnIncompleteOrMisnamedCheckpoint) {
  TrainConfig c = Tiny("resume_incomplete");
  c.steps = 4;
  c.checkpoint_every = 2;
  ASSERT_EQ(RunAndGetLosses(1, c).size(), 4u);
  const std::string step2 = CheckpointDir(c.output_dir, 2), step4 = CheckpointDir(c.output_dir, 4);
  std::filesystem::rename(step4 + "/trainer_state.json", c.output_dir + "/state4.json");
  TrainConfig resumed = c;
  resumed.resume = true;
  resumed.steps = 6;
  EXPECT_EQ(TrainError(1, resumed),
            absl::StrCat(step4,
                         " has no trainer_state.json: it is not a complete weft checkpoint "
                         "(expected one in every step_N directory; move the directory out of ",
                         c.output_dir, "/checkpoints to resume from an earlier one)"));
  EXPECT_TRUE(std::filesystem::exists(step4 + "/model-tp00000-of-00001.safetensors"));
  std::filesystem::copy_file(step2 + "/trainer_state.json", step4 + "/trainer_state.json");
  EXPECT_EQ(TrainError(1, resumed),
            absl::StrCat(step4,
                         "/trainer_state.json says step 2, but its directory is step 4 (expected "
                         "the same step; rename or remove the directory)"));
  EXPECT_TRUE(std::filesystem::exists(step2 + "/model-tp00000-of-00001.safetensors"));
}

// One flipped byte in a training checkpoint is caught on resume (it used to
// resume with different losses).
TEST(Trainer, ResumeVerifiesChecksums) {
  TrainConfig c = Tiny("checksums");
  c.steps = 4;
  c.checkpoint_every = 2;
  ASSERT_EQ(RunAndGetLosses(1, c).size(), 4u);
  const std::string shard = CheckpointDir(c.output_dir, 4) + "/model-tp00000-of-00001.safetensors";
  {
    std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
    ASSERT_TRUE(f.good()) << shard;
    f.seekg(-10, std::ios::end);
    char byte = 0;
    f.read(&byte, 1);
    f.seekp(-10, std::ios::end);
    byte = static_cast<char>(byte ^ 0x01);
    f.write(&byte, 1);
  }
  TrainConfig resumed = c;
  resumed.resume = true;
  resumed.steps = 6;
  const std::string error = TrainError(1, resumed);
  EXPECT_EQ(error.rfind(shard + ": tensor '", 0), 0u) << error;
  EXPECT_NE(error.find("' has checksum "), std::string::npos) << error;
  EXPECT_NE(error.find(" (the file changed or is corrupt; resume from another checkpoint)"),
            std::string::npos)
      << error;
}

// A loss that stops being finite stops the run before the update: the last
// good checkpoint stays, nothing is exported, metrics.jsonl stays JSON.
TEST(Trainer, ANonFiniteLossStopsTheRun) {
  TrainConfig c = Tiny("nan");
  c.lr = 1e30;
  c.warmup_steps = 0;
  c.grad_clip = 0;
  c.steps = 6;
  c.log_every = 1;
  c.checkpoint_every = 1;
  c.checkpoint_export = true;
  const std::string error = TrainError(1, c);
  EXPECT_NE(error.find("(expected finite values); stopped before the update, the last "
                       "checkpoint is " +
                       c.output_dir + "/checkpoints/step_"),
            std::string::npos)
      << error;
  EXPECT_FALSE(fs::exists(c.output_dir + "/hf"));
  std::ifstream metrics(c.output_dir + "/metrics.jsonl");
  std::string line;
  while (std::getline(metrics, line)) {
    EXPECT_EQ(line.find("nan"), std::string::npos) << line;
    EXPECT_EQ(line.find("inf"), std::string::npos) << line;
  }
}

// After a resume metrics.jsonl holds each step once, in order: the steps up
// to the checkpoint, then the new ones (a restart used to truncate it, a
// resume to duplicate the rolled-back steps).
TEST(Trainer, ResumeKeepsEachMetricsStepOnce) {
  TrainConfig c = Tiny("metrics_resume");
  c.steps = 6;
  c.log_every = 1;
  c.checkpoint_every = 3;
  c.checkpoint_keep = 3;
  ASSERT_EQ(RunAndGetLosses(1, c).size(), 6u);
  fs::remove_all(CheckpointDir(c.output_dir, 6));  // roll back to step 3
  TrainConfig resumed = c;
  resumed.resume = true;
  ASSERT_EQ(RunAndGetLosses(1, resumed).size(), 3u);
  fs::remove_all(CheckpointDir(c.output_dir, 6));
  RunOptions restart;  // and once more as a restarted attempt
  restart.env["TORCHELASTIC_RESTART_COUNT"] = "1";
  ASSERT_TRUE(RunJob(1, c, restart).AllSucceeded());
  std::ifstream in(c.output_dir + "/metrics.jsonl");
  std::vector<int64_t> steps;
  std::string line;
  while (std::getline(in, line)) {
    int64_t step = 0;
    ASSERT_EQ(std::sscanf(line.c_str(), "{\"step\": %ld,", &step), 1) << line;
    steps.push_back(step);
  }
  EXPECT_EQ(steps, (std::vector<int64_t>{1, 2, 3, 4, 5, 6}));
}

// The export is what transformers needs: the fine-tuned model's tokenizer,
// chat template and generation defaults come along, and config.json names
// the dtype the export holds (bf16 here).
TEST(Trainer, ExportCarriesTokenizerFilesAndItsDtype) {
  TrainConfig base = Tiny("export_base");
  base.steps = 2;
  ASSERT_EQ(RunAndGetLosses(1, base).size(), 2u);
  const std::string pretrained = base.output_dir + "/hf";
  for (const char* name : {"tokenizer.json", "generation_config.json", "chat_template.jinja"}) {
    std::ofstream(pretrained + "/" + name) << "{\"from\": \"" << name << "\"}\n";
  }
  TrainConfig c = Tiny("export_tuned");
  c.model_config.clear();
  c.model_pretrained = pretrained;
  c.precision = "bf16";
  c.steps = 2;
  ASSERT_EQ(RunAndGetLosses(1, c).size(), 2u);
  const std::string exported = c.output_dir + "/hf";
  for (const char* name : {"tokenizer.json", "generation_config.json", "chat_template.jinja"}) {
    EXPECT_EQ(ReadTextFile(exported + "/" + name).value_or(""),
              absl::StrCat("{\"from\": \"", name, "\"}\n"))
        << name;
  }
  const std::string config = ReadTextFile(exported + "/config.json").value_or("");
  EXPECT_NE(config.find("\"torch_dtype\": \"bfloat16\""), std::string::npos) << config;
  EXPECT_EQ(config.find("float32"), std::string::npos) << config;
}

// As DCP: a checkpoint saved at TP=2 resumes at TP=1 x DP=2 (and back at
// TP=2 from a TP=1 one), continuing the run as the same mesh would.
TEST(Trainer, ResumeOnAnotherMeshReshards) {
  TrainConfig c = Tiny("reshard");
  c.tp = 2;
  c.steps = 6;
  c.checkpoint_every = 3;
  c.checkpoint_keep = 3;
  std::vector<double> want = RunAndGetLosses(2, c);
  ASSERT_EQ(want.size(), 6u);
  // Back to step 3, then on to 6 as dp 2 x tp 1.
  fs::remove_all(CheckpointDir(c.output_dir, 6));
  TrainConfig dp = c;
  dp.tp = 1;
  dp.dp = 2;
  dp.resume = true;
  std::vector<double> got = RunAndGetLosses(2, dp);
  ASSERT_EQ(got.size(), 3u);
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_NEAR(got[i], want[i + 3], kStepTolerance) << "step " << i + 4;
  }
  // And from dp 2 x tp 1's step-6 checkpoint back to tp 2 for one more step.
  TrainConfig tp = c;
  tp.steps = 7;
  tp.resume = true;
  std::vector<double> more = RunAndGetLosses(2, tp);
  ASSERT_EQ(more.size(), 1u);
  EXPECT_TRUE(std::isfinite(more[0]));
  EXPECT_LT(more[0], want[0]);
}

}  // namespace
}  // namespace weft
