// `weft train --config FILE.yaml [--set key=value ...] [--resume]`: runs
// trainer/trainer.h's Train as this process's part of the job.
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "cli/command.h"

namespace weft {

struct TrainCommand {
  std::string config;
  std::vector<std::string> overrides;  // --set key=value
  bool resume = false;
  /// Print the resolved configuration (every key, defaults included) and exit.
  bool print_config = false;
};

/// The exit code (cli/command.h); progress on `out`.
int RunTrain(const TrainCommand& command, std::ostream& out, std::ostream& err);

/// Registers `train` on `app`.
Subcommand AddTrain(CLI::App& app);

}  // namespace weft
