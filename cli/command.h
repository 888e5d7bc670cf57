// -----------------------------------------------------------------------------
// File: cli/command.h
// -----------------------------------------------------------------------------
//
// The one place a subcommand's outcome becomes an exit code, so every
// `weft` subcommand answers alike:
//
//   0  success;
//   2  bad input (flags, files, checkpoints, plans, configs): the boundary
//      returned a Status, printed as one line `weft NAME: message`;
//   1  a failure during the run (a dead peer, a collective timeout, out of
//      memory): an exception, printed as its first line, as torchrun's
//      workers exit 1.
//
//   int RunInspect(const std::string& path, std::ostream& out, std::ostream& err) {
//     return RunCommand("inspect", err, [&] { return PrintInspect(path, out); });
//   }
//
// Each subcommand registers its own flags on the CLI11 app (`AddInspect`)
// and returns a `Subcommand` that weft_main.cc runs when it was parsed.
#pragma once

#include <functional>
#include <ostream>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace CLI {
class App;
}  // namespace CLI

namespace weft {

/// Exit codes of every subcommand.
inline constexpr int kExitOk = 0;
inline constexpr int kExitRunFailed = 1;
inline constexpr int kExitBadInput = 2;

/// Runs `body` and maps its outcome to the exit code above, writing the one
/// line to `err` (`weft <name>: <message>`).
int RunCommand(absl::string_view name, std::ostream& err,
               const std::function<absl::Status()>& body);

/// A registered subcommand: `cli` is parsed by CLI11, `run` returns the exit
/// code (it reads the flag values `cli` filled in).
struct Subcommand {
  CLI::App* cli = nullptr;
  std::function<int()> run;
};

}  // namespace weft
