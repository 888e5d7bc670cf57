// Where this process sits in the job: rank, world, node, and the store address.
//
// weft reads the same environment PyTorch jobs use, in this order:
//   1. torchrun / weftrun: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
//      GROUP_RANK, MASTER_ADDR, MASTER_PORT.
//   2. plain `mpirun` (Open MPI): OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE,
//      OMPI_COMM_WORLD_LOCAL_RANK, OMPI_COMM_WORLD_LOCAL_SIZE. The store's
//      address comes from MASTER_ADDR/MASTER_PORT when set, else rank 0 picks
//      one and MPI broadcasts it (see runtime.h).
//   3. Slurm `srun`: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID,
//      SLURM_NTASKS_PER_NODE / SLURM_TASKS_PER_NODE, SLURM_NODEID, and the
//      first host of SLURM_STEP_NODELIST / SLURM_JOB_NODELIST (compressed forms
//      such as `node[01-04,07]` included). MASTER_ADDR/MASTER_PORT override.
//   4. none of these: a single process (rank 0 of 1).
//
//   ASSIGN_OR_RETURN(LaunchEnv env, DetectLaunchEnv());
//   std::cout << env.launcher << " rank " << env.rank << "/" << env.world_size;
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace weft {

/// Reads one environment variable; std::nullopt when unset.
using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;

/// The real process environment (getenv).
EnvLookup ProcessEnv();

/// Which launcher's variables the environment was read from.
enum class Launcher { kSingle, kTorchrun, kMpirun, kSlurm };
const char* LauncherName(Launcher launcher);

struct LaunchEnv {
  Launcher launcher = Launcher::kSingle;
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;
  int node_rank = 0;
  /// Host and port of the rendezvous store (hosted by rank 0).
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  /// False under mpirun without MASTER_ADDR: the address is agreed through MPI.
  bool master_known = true;
  /// PyTorch's torchrun: its agent hosts the store at MASTER_ADDR:MASTER_PORT
  /// (TORCHELASTIC_USE_AGENT_STORE=True), so rank 0 connects as a client, and
  /// each attempt's keys live under /worker/attempt_<restart_count>, as
  /// torch's env:// does.
  bool agent_store = false;
  int restart_count = 0;  // TORCHELASTIC_RESTART_COUNT
};

/// Reads and validates the launch environment. Errors name the variable, the
/// value found and the value expected, e.g.
/// `RANK=4 is out of range for WORLD_SIZE=4 (expected 0 <= RANK < 4)`.
absl::StatusOr<LaunchEnv> DetectLaunchEnv(const EnvLookup& env = ProcessEnv());

/// Expands a Slurm hostlist: `node[01-03,07],gpu5` ->
/// {node01, node02, node03, node07, gpu5}. Several bracket groups in one name
/// (`rack[1-2]-n[1-2]`) expand as a product; zero padding is kept.
absl::StatusOr<std::vector<std::string>> ExpandSlurmNodelist(absl::string_view nodelist);

/// Parses a whole string as a decimal int; the error names `what`.
absl::StatusOr<int> ParseIntStrict(absl::string_view what, absl::string_view text);

}  // namespace weft
