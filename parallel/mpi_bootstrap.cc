#include "parallel/mpi_bootstrap.h"

#include <mpi.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "parallel/rendezvous.h"

namespace weft {
namespace {

void FinalizeMpi() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

}  // namespace

absl::Status AgreeOnStoreThroughMpi(LaunchEnv& env) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    if (MPI_Init(nullptr, nullptr) != MPI_SUCCESS) {
      return absl::UnavailableError("MPI_Init failed under mpirun (expected MPI_SUCCESS)");
    }
    std::atexit(FinalizeMpi);
  }
  int size = 0;
  int rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (size != env.world_size || rank != env.rank) {
    return absl::InvalidArgumentError(
        absl::StrCat("MPI says rank ", rank, " of ", size, " but OMPI_COMM_WORLD_RANK/SIZE say ",
                     env.rank, " of ", env.world_size, " (expected them to agree)"));
  }
  char host[256] = {};
  int port = 0;
  if (rank == 0) {
    ::gethostname(host, sizeof(host) - 1);
    port = PickFreePort();
  }
  MPI_Bcast(host, sizeof(host), MPI_CHAR, 0, MPI_COMM_WORLD);
  MPI_Bcast(&port, 1, MPI_INT, 0, MPI_COMM_WORLD);
  if (port == 0) {
    return absl::UnavailableError("rank 0 found no free port for the store (expected one)");
  }
  env.master_addr = host;
  env.master_port = port;
  env.master_known = true;
  return absl::OkStatus();
}

}  // namespace weft
