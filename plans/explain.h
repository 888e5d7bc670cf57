// -----------------------------------------------------------------------------
// File: plans/explain.h
// -----------------------------------------------------------------------------
//
// A tensor-parallel dry run: reads only config.json and the checkpoint
// headers and prints, per parameter, the style, global and local shapes,
// bytes per rank, the collectives per forward and backward and the
// placement, then totals per rank. With pp > 1 it adds each pipeline
// stage's modules, parameters and bytes per rank, the estimated activation
// memory per rank under the schedule, the schedule's rank x time grid and its
// bubble. With --dp-shard (and always) it ends with the memory one rank
// needs in training: parameters, gradients, optimizer state, activations.
// `weft plan explain` (cli/plan_explain.cc) prints it; `--model` may be a
// config.json alone.
//
//   ExplainOptions options;
//   options.model = "/models/llama";
//   options.tp = 4;
//   RETURN_IF_ERROR(ExplainPlan(options, std::cout));
#pragma once

#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include <c10/core/ScalarType.h>

#include "absl/status/status.h"
#include "models/config.h"

namespace weft {

struct ExplainOptions {
  /// Checkpoint directory (config.json and the safetensors headers).
  std::string model;
  /// A plan file, or "auto" (plans/shipped_plans.h).
  std::string plan = "auto";
  int tp = 1;
  int dp = 1;
  /// Pipeline stages (pp > 1): the pp_plan (a file or auto), the schedule,
  /// micro-batches per step (0: pp) and stages per rank (0: the schedule's).
  int pp = 1;
  std::string pp_plan = "auto";
  std::string pp_schedule = "1f1b";
  int pp_microbatches = 0;
  int stages_per_rank = 0;
  /// The activation estimate's micro-batch: sequences and tokens per sequence.
  int64_t micro_batch = 1;
  int64_t seq_len = 2048;
  /// Sharded data parallelism: each parameter's (tp-local) tensor cut in
  /// dp_shard pieces, with its gradient and optimizer state.
  int dp_shard = 1;
  bool activation_checkpointing = false;
  bool reshard_after_forward = true;
};

/// What one rank holds in a training step, in bytes: parameters,
/// gradients, AdamW state (two fp32 moments, and fp32 master weights when
/// the parameters are not fp32), the activation peak, and the parameters
/// gathered whole for compute under dp_shard.
struct MemoryEstimate {
  double parameters = 0, gradients = 0, optimizer = 0, activations = 0, gathered = 0;
  double total() const { return parameters + gradients + optimizer + activations + gathered; }
  /// "parameters 1.2 GiB, gradients 1.2 GiB, optimizer 2.4 GiB, activations ~3.1 GiB
  /// (...), total ~7.9 GiB".
  std::string ToString() const;
};

struct MemoryShape {
  at::ScalarType dtype = at::kFloat;
  int64_t local_parameters = 0;     // elements this rank updates (after tp, pp, dp_shard)
  int64_t gathered_parameters = 0;  // elements gathered whole for compute (dp_shard > 1)
  int64_t frozen_parameters = 0;    // elements held but not trained (LoRA's base): weights only
  int64_t layers = 0;               // decoder layers on this rank
  int tp = 1;
  int64_t micro_batch = 1, seq_len = 1;
  int64_t microbatches_in_flight = 1;  // pipeline schedules hold several
  bool activation_checkpointing = false;
};

/// The parameter elements dp_shard holds whole at once: with
/// reshard_after_forward the embedding, norm and head (kept through the
/// step) plus the largest decoder layer; without, all of them. `tp_local`:
/// each parameter's name and tp-local element count.
int64_t GatheredElements(const std::vector<std::pair<std::string, int64_t>>& tp_local,
                         bool reshard_after_forward);

/// The estimate for `shape`: activations per layer and micro-batch are
/// Megatron's s*b*h*(10 + 24/tp + 5*a*s/(h*tp)) bytes in 16-bit (x2 in
/// fp32; Korthikanti et al. 2022); with activation checkpointing a layer
/// keeps only its input (s*b*h elements) and one layer is recomputed at a time.
MemoryEstimate EstimateMemory(const ModelConfig& config, const MemoryShape& shape);

/// Writes the table and the totals to `out`; errors are one line.
absl::Status ExplainPlan(const ExplainOptions& options, std::ostream& out);

}  // namespace weft
