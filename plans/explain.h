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
// bubble. `weft plan explain` (cli/plan_explain.cc) prints it.
//
//   ExplainOptions options;
//   options.model = "/models/llama";
//   options.tp = 4;
//   RETURN_IF_ERROR(ExplainPlan(options, std::cout));
#pragma once

#include <ostream>
#include <string>

#include "absl/status/status.h"

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
};

/// Writes the table and the totals to `out`; errors are one line.
absl::Status ExplainPlan(const ExplainOptions& options, std::ostream& out);

}  // namespace weft
