// weft: the command line. One subcommand per job; each registers its own
// flags (cli/*.h) and answers with cli/command.h's exit codes.
//
//   weft smoke [--device cpu|cuda|auto]   the runtime's 2-rank smoke job
//   weft inspect PATH                     tensors of a safetensors file or checkpoint
//   weft forward --model DIR --input IN --output OUT [...]   logits (and hidden states)
//   weft generate --model DIR --prompt-ids 1,2,3 [...]       KV-cached generation
//   weft eval --model DIR --data PREFIX [...]                mean loss and perplexity
//   weft plan explain --model DIR --plan FILE|auto --tp N [--dp M]   TP dry run
//   weft train --config FILE.yaml [--set key=value ...] [--resume]   training
#include <CLI/CLI.hpp>

#include <vector>

#include "cli/command.h"
#include "cli/inspect.h"
#include "cli/model_commands.h"
#include "cli/plan_explain.h"
#include "cli/plan_schedule.h"
#include "cli/smoke.h"
#include "cli/train.h"

int main(int argc, char** argv) {
  CLI::App app{"weft: train and fine-tune Hugging Face transformer models on many GPUs.", "weft"};
  app.require_subcommand(1);
  app.option_defaults()->always_capture_default();  // --help shows every default
  const std::vector<weft::Subcommand> subcommands = {
      weft::AddSmoke(app),        weft::AddInspect(app), weft::AddForward(app),
      weft::AddGenerate(app),     weft::AddEval(app),    weft::AddPlanExplain(app),
      weft::AddPlanSchedule(app), weft::AddTrain(app),
  };
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);  // --help prints and returns 0; a bad flag returns non-zero
  }
  for (const weft::Subcommand& subcommand : subcommands) {
    if (subcommand.cli->parsed()) return subcommand.run();
  }
  return weft::kExitBadInput;
}
