#include "trainer/train_config.h"

#include "gtest/gtest.h"

namespace weft {
namespace {

constexpr const char* kMinimal = R"(
model: {config: examples/finetune_tiny/config.json}
data: {text: t.txt}
train: {steps: 10, global_batch: 4}
)";

std::string Error(absl::string_view text, const std::vector<std::string>& overrides = {}) {
  auto c = ParseTrainConfig(text, "run.yaml", overrides);
  EXPECT_FALSE(c.ok());
  return std::string(c.status().message());
}

TEST(TrainConfig, ParsesSectionsAndDefaults) {
  auto c = ParseTrainConfig(R"(
model: {pretrained: /m, attn_implementation: eager}
parallel: {tp: 2, dp: 1, plan: plans/llama.yaml, loss_parallel: true}
data: {path: data/train, seq_len: 64, shuffle: false}
optimizer: {lr: 1.0e-3, betas: [0.9, 0.99], eps: 1.0e-6, weight_decay: 0.0, grad_clip: 0.5}
schedule: {warmup_steps: 5, decay: linear, min_lr_ratio: 0.1}
train: {steps: 100, global_batch: 8, micro_batch: 2, precision: bf16, seed: 3}
checkpoint: {every: 50, keep: 3, export: false}
logging: {every: 5}
sample: {prompt: "ROMEO.", max_new_tokens: 20}
output_dir: runs/x
)",
                            "run.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model_pretrained, "/m");
  EXPECT_EQ(c->attn_implementation, "eager");
  EXPECT_EQ(c->tp, 2);
  EXPECT_TRUE(c->loss_parallel);
  EXPECT_EQ(c->data_path, "data/train");
  EXPECT_EQ(c->seq_len, 64);
  EXPECT_FALSE(c->shuffle);
  EXPECT_DOUBLE_EQ(c->lr, 1e-3);
  EXPECT_EQ(c->betas, (std::vector<double>{0.9, 0.99}));
  EXPECT_DOUBLE_EQ(c->grad_clip, 0.5);
  EXPECT_EQ(c->decay, "linear");
  EXPECT_EQ(c->steps, 100);
  EXPECT_EQ(c->micro_batch, 2);
  EXPECT_EQ(c->precision, "bf16");
  EXPECT_EQ(c->checkpoint_every, 50);
  EXPECT_FALSE(c->checkpoint_export);
  EXPECT_EQ(c->sample_prompt, "ROMEO.");
  EXPECT_EQ(c->output_dir, "runs/x");
  auto d = ParseTrainConfig(kMinimal, "run.yaml");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->tp, 1);
  EXPECT_EQ(d->seq_len, 256);
  EXPECT_EQ(d->precision, "fp32");
}

TEST(TrainConfig, OverridesWin) {
  auto c = ParseTrainConfig(kMinimal, "run.yaml",
                            {"optimizer.lr=3e-4", "optimizer.betas=[0.8, 0.9]", "parallel.tp=4",
                             "train.precision=bf16", "sample.prompt=HAMLET."});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ(c->lr, 3e-4);
  EXPECT_EQ(c->betas, (std::vector<double>{0.8, 0.9}));
  EXPECT_EQ(c->tp, 4);
  EXPECT_EQ(c->precision, "bf16");
  EXPECT_EQ(c->sample_prompt, "HAMLET.");
}

// One name per concept: the CLI's --tp-plan and --dtype names work as keys,
// and --dtype's values as precisions.
TEST(TrainConfig, CliNamesAreAliases) {
  auto c = ParseTrainConfig(kMinimal, "run.yaml",
                            {"parallel.tp_plan=plans/llama.yaml", "train.dtype=bfloat16"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->plan, "plans/llama.yaml");
  EXPECT_EQ(c->precision, "bf16");
  auto f = ParseTrainConfig(kMinimal, "run.yaml", {"train.precision=float32"});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->precision, "fp32");
}

TEST(TrainConfig, ResolvedYamlRoundTrips) {
  auto c = ParseTrainConfig(kMinimal, "run.yaml", {"optimizer.lr=0.002", "parallel.tp=2"});
  ASSERT_TRUE(c.ok()) << c.status();
  auto again = ParseTrainConfig(c->ToYaml(), "resolved");
  ASSERT_TRUE(again.ok()) << again.status() << "\n" << c->ToYaml();
  EXPECT_EQ(again->ToYaml(), c->ToYaml());
  EXPECT_DOUBLE_EQ(again->lr, 0.002);
  EXPECT_EQ(again->tp, 2);
}

// Instruction data: packing and an eval set, each misuse one line.
TEST(TrainConfig, PackingAndEvaluation) {
  auto c = ParseTrainConfig(
      kMinimal, "run.yaml",
      {"data.packing=true", "data.eval_fraction=0.1", "eval.every=5", "eval.batches=2"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->packing);
  EXPECT_DOUBLE_EQ(c->eval_fraction, 0.1);
  EXPECT_EQ(c->eval_every, 5);
  EXPECT_EQ(c->eval_batches, 2);
  EXPECT_EQ(Error(kMinimal, {"data.eval_fraction=1"}),
            "run.yaml: data.eval_fraction is 1 (expected in [0, 1))");
  EXPECT_EQ(Error(kMinimal, {"data.eval_fraction=0.1", "data.eval_path=data/val"}),
            "run.yaml: set at most one of data.eval_path (a token file to evaluate on) and "
            "data.eval_fraction (documents of data.path held out)");
  EXPECT_EQ(Error(kMinimal, {"eval.every=-1"}),
            "run.yaml: eval.every is -1 (expected >= 1, or 0 for only at the end)");
}

// LoRA's section: PEFT's keys; target_modules a list or one string.
TEST(TrainConfig, Lora) {
  auto c = ParseTrainConfig(
      std::string(kMinimal) + "lora: {r: 16, alpha: 32, target_modules: [q_proj, v_proj]}\n",
      "run.yaml", {"checkpoint.merge_lora=true"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->lora_r, 16);
  EXPECT_DOUBLE_EQ(c->lora_alpha, 32);
  EXPECT_EQ(c->lora_target_modules, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_TRUE(c->merge_lora);
  auto again = ParseTrainConfig(c->ToYaml(), "resolved");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->lora_target_modules, c->lora_target_modules);
  auto one = ParseTrainConfig(kMinimal, "run.yaml", {"lora.r=4", "lora.target_modules=all-linear"});
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(one->lora_target_modules, (std::vector<std::string>{"all-linear"}));
  EXPECT_EQ(Error(kMinimal, {"checkpoint.merge_lora=true"}),
            "run.yaml: checkpoint.merge_lora needs lora.r >= 1 (a LoRA run)");
  EXPECT_EQ(Error(kMinimal, {"lora.r=4", "lora.dropout=1.5"}),
            "run.yaml: lora.dropout is 1.5 (expected in [0, 1))");
  EXPECT_EQ(Error(kMinimal, {"lora.r=4", "lora.target_modules={a: 1}"}),
            "--set: lora.target_modules is a mapping (expected a list of strings)");
}

TEST(TrainConfig, UnknownKeysNameTheKey) {
  EXPECT_EQ(Error(std::string(kMinimal) + "optimizer: {lrr: 1}\n"),
            "run.yaml: unknown key 'optimizer.lrr' (known keys under optimizer: lr, betas, eps, "
            "weight_decay, grad_clip)");
  EXPECT_EQ(Error(std::string(kMinimal) + "optimiser: {lr: 1}\n"),
            "run.yaml: unknown key 'optimiser' (known sections and keys: model, parallel, data, "
            "eval, optimizer, schedule, train, checkpoint, lora, logging, sample, output_dir)");
  EXPECT_EQ(Error(kMinimal, {"train.stepz=3"}),
            "--set: unknown key 'train.stepz' (known keys under train: steps, global_batch, "
            "micro_batch, precision, activation_checkpointing, seed, resume, device)");
  EXPECT_EQ(Error(kMinimal, {"optimizer.lr"}),
            "--set optimizer.lr: expected key=value (e.g. --set optimizer.lr=3e-4)");
}

TEST(TrainConfig, IllTypedValuesNameTheKey) {
  EXPECT_EQ(Error(kMinimal, {"optimizer.lr=fast"}),
            "--set: optimizer.lr is 'fast' (expected a number)");
  EXPECT_EQ(Error(kMinimal, {"train.steps=1.5"}),
            "--set: train.steps is '1.5' (expected an integer)");
  EXPECT_EQ(Error(kMinimal, {"data.shuffle=maybe"}),
            "--set: data.shuffle is 'maybe' (expected true or false)");
  EXPECT_EQ(Error(kMinimal, {"optimizer.betas=0.9"}),
            "--set: optimizer.betas is '0.9' (expected a list of numbers)");
  EXPECT_EQ(Error(std::string(kMinimal) + "parallel: {tp: [2]}\n"),
            "run.yaml: parallel.tp is a list (expected an integer)");
  EXPECT_EQ(Error("- a\n- b\n"), "run.yaml: the top level is a list (expected a mapping)");
  // Non-finite numbers never reach the optimizer (lr=.inf made every loss NaN).
  EXPECT_EQ(Error(kMinimal, {"optimizer.lr=.inf"}),
            "--set: optimizer.lr is '.inf' (expected a finite number)");
  EXPECT_EQ(Error(kMinimal, {"optimizer.weight_decay=.nan"}),
            "--set: optimizer.weight_decay is '.nan' (expected a finite number)");
  EXPECT_EQ(Error(kMinimal, {"optimizer.betas=[0.9, .inf]"}),
            "--set: optimizer.betas is a list (expected a list of finite numbers)");
}

TEST(TrainConfig, ValuesAreValidated) {
  EXPECT_EQ(Error(kMinimal, {"model.pretrained=/m"}),
            "run.yaml: set exactly one of model.pretrained (a checkpoint to fine-tune) and "
            "model.config (a config.json to train from scratch)");
  EXPECT_EQ(Error(kMinimal, {"data.path=x"}),
            "run.yaml: set exactly one of data.path (a token file prefix) and data.text (a text "
            "file, byte-level)");
  EXPECT_EQ(Error(kMinimal, {"train.precision=fp8"}),
            "run.yaml: train.precision is 'fp8' (expected fp32 or bf16 (float32 or bfloat16))");
  EXPECT_EQ(Error(kMinimal, {"schedule.decay=step"}),
            "run.yaml: schedule.decay is 'step' (expected cosine, linear or constant)");
  EXPECT_EQ(Error(kMinimal, {"optimizer.betas=[0.9, 1.0]"}),
            "run.yaml: optimizer.betas is [0.9, 1] (expected two numbers in [0, 1))");
  EXPECT_EQ(Error(kMinimal, {"train.steps=0"}), "run.yaml: train.steps is 0 (expected >= 1)");
  EXPECT_EQ(Error(kMinimal, {"data.seq_len=1"}), "run.yaml: data.seq_len is 1 (expected >= 2)");
}

TEST(TrainConfig, MissingFile) {
  auto c = LoadTrainConfig("/nonexistent/run.yaml");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().message(),
            "config /nonexistent/run.yaml: cannot be opened (No such file or directory)");
}

}  // namespace
}  // namespace weft
