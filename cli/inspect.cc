#include "cli/inspect.h"

#include <CLI/CLI.hpp>

#include <iostream>
#include <memory>

#include "checkpoint/inspect.h"

namespace weft {

int RunInspect(const std::string& path, std::ostream& out, std::ostream& err) {
  return RunCommand("inspect", err, [&] { return PrintInspect(path, out); });
}

Subcommand AddInspect(CLI::App& app) {
  auto path = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand(
      "inspect", "List the tensors of a .safetensors file or a checkpoint directory.");
  cmd->add_option("PATH", *path, "a .safetensors file or checkpoint directory")->required();
  return {cmd, [path] { return RunInspect(*path, std::cout, std::cerr); }};
}

}  // namespace weft
