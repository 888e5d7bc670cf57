#include "cli/train.h"

#include <CLI/CLI.hpp>

#include <iostream>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/status.h"
#include "trainer/train_config.h"
#include "trainer/trainer.h"

namespace weft {
namespace {

// The resolved YAML with `# default: X` after every value that differs
// from TrainConfig's default (both dumps list the same keys in order).
std::string WithDefaults(const std::string& resolved, const std::string& defaults) {
  std::vector<std::string> r = absl::StrSplit(resolved, '\n');
  std::vector<std::string> d = absl::StrSplit(defaults, '\n');
  if (r.size() != d.size()) return resolved;
  std::string out;
  for (size_t i = 0; i < r.size(); ++i) {
    out += r[i];
    if (r[i] != d[i]) {
      const size_t colon = d[i].find(": ");
      const size_t dash = d[i].find("- ");
      const std::string value = colon != std::string::npos  ? d[i].substr(colon + 2)
                                : dash != std::string::npos ? d[i].substr(dash + 2)
                                                            : d[i];
      absl::StrAppend(&out, "  # default: ", value);
    }
    if (i + 1 < r.size()) out += "\n";
  }
  return out;
}

}  // namespace

int RunTrain(const TrainCommand& command, std::ostream& out, std::ostream& err) {
  return RunCommand("train", err, [&]() -> absl::Status {
    std::vector<std::string> overrides = command.overrides;
    if (command.resume) overrides.push_back("train.resume=true");
    ASSIGN_OR_RETURN(TrainConfig config, LoadTrainConfig(command.config, overrides));
    if (command.print_config) {
      out << WithDefaults(config.ToYaml(), TrainConfig().ToYaml()) << "\n";
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
