// The Trainer: distributed training and fine-tuning of the models in
// models/ on the plan engine, configured by one YAML file
// (trainer/train_config.h).
//
// Each process joins the job from its environment (weftrun, mpirun, srun or
// a single process), builds the (dp, tp) mesh, then either loads a Hugging
// Face checkpoint (each rank only its shards) or initialises the model from
// a config.json (the same weights at any tp), and trains:
//   - micro-batches accumulate gradients; the loss is transformers' (mean
//     over every counted token of the global batch);
//   - gradients are averaged over dp in buckets, clipped by the global norm
//     (each parameter counted once over tp shards and dp replicas);
//   - AdamW (no weight decay on norms and biases) with fp32 state, fp32
//     master weights under bf16, warmup then cosine/linear decay;
//   - a progress line per logging step, metrics.jsonl, loss.svg at the end;
//   - checkpoints every N steps and at the end (checkpointing.h), exact
//     resume (`train.resume`, and automatically in an attempt restarted by
//     weftrun/torchrun, TORCHELASTIC_RESTART_COUNT > 0, when a checkpoint
//     exists), and a consolidated Hugging Face export.
//
//   $ weftrun --nproc-per-node 2 weft train --config run.yaml --set optimizer.lr=1e-3
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "trainer/train_config.h"

namespace weft {

struct TrainResult {
  /// (step, loss) of every step this process ran (1-based steps).
  std::vector<std::pair<int64_t, double>> losses;
  std::vector<double> grad_norms;
  /// (step, validation loss) of every evaluation this process ran.
  std::vector<std::pair<int64_t, double>> eval_losses;
  int64_t first_step = 1;     // > 1 after a resume
  std::string export_dir;     // the Hugging Face export, if written
  std::string sample_before;  // greedy samples (byte-level data with a prompt)
  std::string sample_after;
};

/// Runs `config` as this process's part of the job; rank 0 writes progress
/// to `log`. Errors (bad config, data, checkpoint, mesh) are one line; a
/// failure during the run (a dead peer) throws. `weft train` is
/// cli/train.cc.
absl::StatusOr<TrainResult> Train(const TrainConfig& config, std::ostream& log);

}  // namespace weft
