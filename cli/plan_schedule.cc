#include "cli/plan_schedule.h"

#include <CLI/CLI.hpp>

#include <iostream>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/status.h"
#include "base/text_file.h"
#include "parallel/pipeline_schedule.h"

namespace weft {
namespace {

// The closed form of the schedule's bubble, as text.
std::string ClosedForm(const PipelineShape& shape, bool from_csv) {
  const int p = shape.ranks, v = shape.stages_per_rank, m = shape.microbatches;
  if (from_csv) return "a custom schedule";
  const std::string name = absl::AsciiStrToLower(shape.schedule);
  if (name == "zb1p") {
    return absl::StrFormat("ZB-H1's (p-1)/(3m) = %.4g, 1F1B's (p-1)/m = %.4g", (p - 1.0) / (3 * m),
                           (p - 1.0) / m);
  }
  if (v > 1) return absl::StrFormat("closed form (p-1)/(v*m) = %.4g", (p - 1.0) / (v * m));
  return absl::StrFormat("closed form (p-1)/m = %.4g", (p - 1.0) / m);
}

absl::Status PlanSchedule(const PlanScheduleOptions& o, std::ostream& out) {
  PipelineShape shape;
  shape.schedule = o.csv.empty() ? o.schedule : "custom";
  shape.ranks = o.pp;
  shape.microbatches = o.microbatches > 0 ? o.microbatches : o.pp;
  const bool interleaved = absl::AsciiStrToLower(o.schedule).find("interleaved") == 0;
  shape.stages_per_rank = o.stages_per_rank > 0 ? o.stages_per_rank : (interleaved ? 2 : 1);
  PipelineSchedule schedule;
  if (o.csv.empty()) {
    ASSIGN_OR_RETURN(schedule, MakeSchedule(shape));
  } else {
    ASSIGN_OR_RETURN(std::string text, ReadTextFile(o.csv));
    ASSIGN_OR_RETURN(schedule, ScheduleFromCsv(text, shape));
  }
  ASSIGN_OR_RETURN(SimulatedPipeline sim, Simulate(schedule));
  if (!o.write_csv.empty())
    RETURN_IF_ERROR(WriteTextFileAtomically(o.write_csv, ScheduleToCsv(schedule)));
  out << "pipeline schedule " << shape.schedule << ": " << shape.ranks << " ranks x "
      << shape.stages_per_rank << " stage(s) per rank x " << shape.microbatches
      << " micro-batches (unit-time model: F 1, B 2, I 1, W 1; communication free)\n"
      << FormatGrid(sim.grid);
  for (int r = 0; r < shape.ranks; ++r) {
    out << "rank " << r << ": busy " << sim.busy[r] << ", idle " << sim.idle[r]
        << ", peak activations " << sim.peak_activations[r] << " micro-batch(es) of one stage\n";
  }
  out << absl::StrFormat("bubble %.4g (idle / busy; %s), makespan %d\n", sim.bubble,
                         ClosedForm(shape, !o.csv.empty()), sim.makespan);
  return absl::OkStatus();
}

}  // namespace

int RunPlanSchedule(const PlanScheduleOptions& options, std::ostream& out, std::ostream& err) {
  return RunCommand("plan schedule", err, [&] { return PlanSchedule(options, out); });
}

Subcommand AddPlanSchedule(CLI::App& app) {
  auto options = std::make_shared<PlanScheduleOptions>();
  CLI::App* plan = app.get_subcommand("plan");
  CLI::App* cmd = plan->add_subcommand(
      "schedule", "Dry run of a pipeline schedule: the rank x time grid, idle time and bubble.");
  cmd->add_option("--pp", options->pp, "pipeline ranks")->required();
  cmd->add_option("--pp-schedule", options->schedule, "GPipe, 1F1B, Interleaved1F1B or ZB1P")
      ->capture_default_str();
  cmd->add_option("--pp-microbatches", options->microbatches, "micro-batches (default: --pp)");
  cmd->add_option("--stages-per-rank", options->stages_per_rank,
                  "stages per rank (default: 2 for Interleaved1F1B, else 1)");
  cmd->add_option("--csv", options->csv,
                  "check this schedule (torch's CSV: a row per rank, an action per cell)");
  cmd->add_option("--write-csv", options->write_csv, "write the schedule as torch's CSV");
  return {cmd, [options] { return RunPlanSchedule(*options, std::cout, std::cerr); }};
}

}  // namespace weft
