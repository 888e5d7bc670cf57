// Agreeing on the store address under plain `mpirun` without MASTER_ADDR.
//
// No torch wheel has c10d's MPI backend, so weft uses MPI only for this:
// rank 0 picks its hostname and a free port, and MPI_Bcast hands them to all
// ranks. MPI stays initialised until the process exits (Open MPI expects
// MPI_Finalize from every process that called MPI_Init).
#pragma once

#include "absl/status/status.h"
#include "parallel/launch_env.h"

namespace weft {

/// Fills env.master_addr/master_port through MPI; sets env.master_known.
absl::Status AgreeOnStoreThroughMpi(LaunchEnv& env);

}  // namespace weft
