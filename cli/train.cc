#include "cli/train.h"

#include <CLI/CLI.hpp>

#include <iostream>
#include <memory>

#include "base/status.h"
#include "trainer/train_config.h"
#include "trainer/trainer.h"

namespace weft {

int RunTrain(const TrainCommand& command, std::ostream& out, std::ostream& err) {
  return RunCommand("train", err, [&]() -> absl::Status {
    std::vector<std::string> overrides = command.overrides;
    if (command.resume) overrides.push_back("train.resume=true");
    ASSIGN_OR_RETURN(TrainConfig config, LoadTrainConfig(command.config, overrides));
    if (command.print_config) {
      out << config.ToYaml();
      return absl::OkStatus();
    }
    return Train(config, out).status();
  });
}

Subcommand AddTrain(CLI::App& app) {
  auto c = std::make_shared<TrainCommand>();
  CLI::App* cmd = app.add_subcommand(
      "train",
      "Train or fine-tune a model as configured by a YAML file (under weftrun, mpirun "
      "or srun for several ranks).");
  cmd->add_option("--config", c->config, "the training configuration (YAML)")->required();
  cmd->add_option("--set", c->overrides,
                  "override a key of the configuration: --set optimizer.lr=3e-4 (repeatable)");
  cmd->add_flag("--resume", c->resume, "continue from the latest checkpoint in output_dir");
  cmd->add_flag("--print-config", c->print_config,
                "print every key of the resolved configuration (defaults included) and exit");
  return {cmd, [c] { return RunTrain(*c, std::cout, std::cerr); }};
}

}  // namespace weft
