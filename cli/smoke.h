// `weft smoke`: the runtime's end-to-end check, run on every rank.
//
// Joins the job (any launcher), runs each collective on small tensors whose
// results every rank can predict (uneven shards included), builds a 2-axis
// mesh when the world allows it, prints one line per rank of what it
// computed, and returns non-zero if any value differs from the expected one.
//
//   weftrun --nproc-per-node 2 bazel-bin/weft smoke
#pragma once

#include <string>

#include "cli/command.h"

namespace weft {

struct SmokeOptions {
  /// "cpu", "cuda" or "auto" (see RuntimeOptions::device).
  std::string device = "auto";
};

/// Returns the process exit code: 0 when every check passed, 1 when a value
/// differed, 2 when the job could not start (cli/command.h).
int RunSmoke(const SmokeOptions& options);

/// Registers `smoke [--device D]` on `app`.
Subcommand AddSmoke(CLI::App& app);

}  // namespace weft
