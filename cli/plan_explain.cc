#include "cli/plan_explain.h"

#include <CLI/CLI.hpp>

#include <iostream>
#include <memory>

namespace weft {

int RunPlanExplain(const ExplainOptions& options, std::ostream& out, std::ostream& err) {
  return RunCommand("plan explain", err, [&] { return ExplainPlan(options, out); });
}

Subcommand AddPlanExplain(CLI::App& app) {
  auto options = std::make_shared<ExplainOptions>();
  CLI::App* plan = app.add_subcommand("plan", "Tensor-parallel plans.");
  plan->require_subcommand(1);
  CLI::App* cmd = plan->add_subcommand(
      "explain", "Dry run: per parameter the style, shapes, bytes per rank and collectives.");
  cmd->add_option("--model", options->model, "checkpoint directory")->required();
  cmd->add_option("--tp-plan,--plan", options->plan,
                  "a plan file, or auto (as forward's --tp-plan)");
  cmd->add_option("--tp", options->tp, "tensor-parallel size")->required();
  cmd->add_option("--dp", options->dp, "data-parallel size");
  return {cmd, [options] { return RunPlanExplain(*options, std::cout, std::cerr); }};
}

}  // namespace weft
