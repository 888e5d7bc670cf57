// weft: the command line. One subcommand per job; each lives in its package.
//
//   weft smoke [--device cpu|cuda|auto]   the runtime's 2-rank smoke job
//   weft inspect PATH                     tensors of a safetensors file or checkpoint
#include <CLI/CLI.hpp>
#include <iostream>

#include "checkpoint/inspect.h"
#include "launcher/smoke.h"

int main(int argc, char** argv) {
  CLI::App app{"weft: train and fine-tune Hugging Face transformer models on many GPUs.", "weft"};
  app.require_subcommand(1);

  weft::SmokeOptions smoke;
  CLI::App* smoke_cmd = app.add_subcommand(
      "smoke", "Run every collective on every rank and print what each computed.");
  smoke_cmd->add_option("--device", smoke.device, "cpu, cuda or auto")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}));

  std::string inspect_path;
  CLI::App* inspect_cmd = app.add_subcommand(
      "inspect", "List the tensors of a .safetensors file or a checkpoint directory.");
  inspect_cmd->add_option("PATH", inspect_path, "a .safetensors file or checkpoint directory")
      ->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (smoke_cmd->parsed()) return weft::RunSmoke(smoke);
  if (inspect_cmd->parsed()) return weft::RunInspect(inspect_path, std::cout, std::cerr);
  return 2;
}
