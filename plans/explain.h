// `weft plan explain --model DIR --plan FILE|auto --tp N [--dp M]`: a dry run
// that reads only config.json and the checkpoint headers and prints, per
// parameter, the style, global and local shapes, bytes per rank and the
// collectives per forward and backward, then totals per rank.
#pragma once

#include <ostream>
#include <string>

namespace weft {

struct ExplainCommand {
  std::string model;
  std::string plan = "auto";
  int tp = 1;
  int dp = 1;
};

/// Returns the exit code (0, or 2 with one line on `err`).
int RunPlanExplain(const ExplainCommand& command, std::ostream& out, std::ostream& err);

}  // namespace weft
