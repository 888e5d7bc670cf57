#!/usr/bin/env bash
# The runtime smoke job under plain Open MPI: 4 ranks on this host. weft reads
# OMPI_COMM_WORLD_*; rank 0 picks the store's address and MPI broadcasts it.
# For several hosts add `--host a:4,b:4` (and -x MASTER_ADDR=a -x MASTER_PORT=29500
# to pin the store).
set -euo pipefail
cd "$(dirname "$0")/.."
root_flag=()
[[ $(id -u) -eq 0 ]] && root_flag=(--allow-run-as-root)
exec mpirun "${root_flag[@]}" --oversubscribe -np "${1:-4}" bazel-bin/weft smoke --device cpu
