// TrainConfig: one YAML file configures a training or fine-tuning run; any
// key can be overridden from the command line with `--set key=value`
// (dotted keys, YAML values: `--set optimizer.lr=3e-4`,
// `--set optimizer.betas=[0.9,0.99]`).
//
//   model:      {pretrained: DIR}          # fine-tune a Hugging Face checkpoint, or
//               {config: FILE.json}        # train from scratch (transformers' init)
//   parallel:   {tp: 2, dp: 1, plan: auto, loss_parallel: false,
//                pp: 2, pp_plan: auto, pp_schedule: 1f1b, pp_microbatches: 8}
//   data:       {path: PREFIX | text: FILE.txt, seq_len: 256, shuffle: true,
//                packing: false, eval_path: PREFIX | eval_fraction: 0.05}
//   eval:       {every: 100, batches: 0}        # with eval data: loss, perplexity
//   optimizer:  {lr: 3e-4, betas: [0.9, 0.95], eps: 1e-8, weight_decay: 0.1, grad_clip: 1.0}
//   schedule:   {warmup_steps: 100, decay: cosine, min_lr_ratio: 0.1}
//   train:      {steps: 1000, global_batch: 32, micro_batch: 4, precision: bf16,
//                activation_checkpointing: false, seed: 0}
//   checkpoint: {every: 500, keep: 2, export: true, merge_lora: false}
//   lora:       {r: 16, alpha: 32, dropout: 0.0, target_modules: [q_proj, v_proj],
//                use_rslora: false}         # r 0 (default): full fine-tuning
//   logging:    {every: 10}
//   sample:     {prompt: "ROMEO.", max_new_tokens: 200}
//   output_dir: runs/my-run
//
// Every key has a type; a key the trainer does not know, or a value of the
// wrong type, is an error naming the key (and the known keys of its section).
//
//   ASSIGN_OR_RETURN(TrainConfig c, LoadTrainConfig("run.yaml", {"optimizer.lr=1e-3"}));
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace weft {

struct TrainConfig {
  // model
  std::string model_pretrained;  // a Hugging Face checkpoint directory
  std::string model_config;      // a config.json (any name), or a directory holding one
  std::string attn_implementation = "sdpa";
  // parallel
  int tp = 1;
  int dp = 0;  // 0: WORLD_SIZE / tp
  std::string plan = "auto";
  bool loss_parallel = false;
  int pp = 1;                        // pipeline ranks
  std::string pp_plan = "auto";      // auto or a plan file with a pp_plan (and pp_split)
  std::string pp_schedule = "1f1b";  // gpipe, 1f1b, interleaved_1f1b or zb1p
  int64_t pp_microbatches = 0;       // 0: from train.micro_batch, else pp
  int pp_stages_per_rank = 0;        // 0: the plan's pp_split, else 2 interleaved, 1 otherwise
  int64_t pp_timeout = 600;          // seconds a stage waits for a peer's tensor
  bool pp_trace = false;             // every action's timing to <output_dir>/pp_trace/rankN.jsonl
  int dp_shard = 1;                  // FSDP2: ranks sharing one replica's parameters
  std::string reduce_dtype = "float32";  // the dtype dp_shard reduce-scatters gradients in
  bool reshard_after_forward = true;  // dp_shard: free each layer's gathered weights after forward
  // data
  std::string data_path;  // a token file prefix (trainer/token_file.h)
  std::string data_text;  // a text file, tokenised byte-level (vocab 256)
  int64_t seq_len = 256;
  bool shuffle = true;
  bool packing = false;        // whole documents packed per row (best-fit decreasing)
  std::string data_eval_path;  // a token file prefix to evaluate on
  double eval_fraction = 0;    // or this fraction of data.path's documents held out
  // eval (with data.eval_path or data.eval_fraction)
  int64_t eval_every = 0;    // steps between evaluations (0: only at the end)
  int64_t eval_batches = 0;  // global batches per evaluation (0: the whole eval set)
  // optimizer (AdamW)
  double lr = 3e-4;
  std::vector<double> betas = {0.9, 0.95};
  double eps = 1e-8;
  double weight_decay = 0.1;
  double grad_clip = 1.0;  // 0: off
  // schedule
  int64_t warmup_steps = 0;
  std::string decay = "cosine";  // cosine, linear or constant
  double min_lr_ratio = 0.0;
  // train
  int64_t steps = 0;
  int64_t global_batch = 0;        // sequences per optimizer step, over all dp ranks
  int64_t micro_batch = 0;         // sequences per forward/backward (0: global_batch / dp)
  std::string precision = "fp32";  // fp32 or bf16 (bf16 weights and compute, fp32 master)
  bool activation_checkpointing = false;
  int64_t seed = 0;
  bool resume = false;          // continue from the latest checkpoint in output_dir
  std::string device = "auto";  // cpu, cuda or auto
  // checkpoint
  int64_t checkpoint_every = 0;  // 0: only at the end
  int64_t checkpoint_keep = 2;
  bool checkpoint_export = true;  // a consolidated HF checkpoint at the end
  bool merge_lora = false;        // with LoRA: also export base + adapter merged (<output_dir>/hf)
  // lora (PEFT's LoraConfig; trainer/lora.h)
  int64_t lora_r = 0;  // 0: no LoRA (full fine-tuning)
  double lora_alpha = 8;
  double lora_dropout = 0;
  std::vector<std::string> lora_target_modules = {"q_proj", "v_proj"};  // PEFT's default for Llama
  bool lora_use_rslora = false;
  // logging
  int64_t log_every = 10;
  // sample (greedy, before and after training; byte-level data only)
  std::string sample_prompt;
  int64_t sample_max_new_tokens = 0;
  // where everything is written
  std::string output_dir = "weft-run";

  /// The resolved configuration as YAML (every key, overrides applied).
  std::string ToYaml() const;
};

/// Parses YAML `text` (`source` names it in errors), applies `overrides`
/// ("key=value", dotted keys) and validates the result.
absl::StatusOr<TrainConfig> ParseTrainConfig(absl::string_view text, const std::string& source,
                                             const std::vector<std::string>& overrides = {});
absl::StatusOr<TrainConfig> LoadTrainConfig(const std::string& path,
                                            const std::vector<std::string>& overrides = {});

}  // namespace weft
