// `weft plan explain --model DIR --plan FILE|auto --tp N [--dp M]`: prints
// plans/explain.h's dry run.
#pragma once

#include <ostream>

#include "cli/command.h"
#include "plans/explain.h"

namespace weft {

/// The exit code (cli/command.h), the table on `out`.
int RunPlanExplain(const ExplainOptions& options, std::ostream& out, std::ostream& err);

/// Registers `plan explain` on `app`.
Subcommand AddPlanExplain(CLI::App& app);

}  // namespace weft
