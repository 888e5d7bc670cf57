// `weft inspect PATH`: prints checkpoint/inspect.h's table.
#pragma once

#include <ostream>
#include <string>

#include "cli/command.h"

namespace weft {

/// The exit code (cli/command.h), the table on `out`.
int RunInspect(const std::string& path, std::ostream& out, std::ostream& err);

/// Registers `inspect PATH` on `app`.
Subcommand AddInspect(CLI::App& app);

}  // namespace weft
