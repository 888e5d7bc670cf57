// `weft plan schedule --pp N [--pp-schedule S] [--pp-microbatches M]
// [--stages-per-rank V] [--csv FILE] [--write-csv FILE]`: a pipeline schedule
// as a rank x time grid on the unit-time model (parallel/pipeline_schedule.h),
// with each rank's busy and idle time, its peak activations and the bubble
// next to the closed form. --csv checks a schedule written in torch's CSV
// format (deadlocks are named); --write-csv saves the generated one.
#pragma once

#include <ostream>
#include <string>

#include "cli/command.h"

namespace weft {

struct PlanScheduleOptions {
  int pp = 2;
  std::string schedule = "1F1B";
  int microbatches = 0;     // 0: pp
  int stages_per_rank = 0;  // 0: 2 for Interleaved1F1B, else 1
  std::string csv;          // read this schedule instead of generating one
  std::string write_csv;
};

/// The exit code (cli/command.h), the grid and figures on `out`.
int RunPlanSchedule(const PlanScheduleOptions& options, std::ostream& out, std::ostream& err);

/// Registers `plan schedule` under the `plan` subcommand (AddPlanExplain
/// creates it).
Subcommand AddPlanSchedule(CLI::App& app);

}  // namespace weft
