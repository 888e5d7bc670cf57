// -----------------------------------------------------------------------------
// File: plans/explain.h
// -----------------------------------------------------------------------------
//
// A tensor-parallel dry run: reads only config.json and the checkpoint
// headers and prints, per parameter, the style, global and local shapes,
// bytes per rank, the collectives per forward and backward and the
// placement, then totals per rank. `weft plan explain` (cli/plan_explain.cc)
// prints it.
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
};

/// Writes the table and the totals to `out`; errors are one line.
absl::Status ExplainPlan(const ExplainOptions& options, std::ostream& out);

}  // namespace weft
