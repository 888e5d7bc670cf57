#!/usr/bin/env bash
# Runs weft's main job on its embedded default, after its own idempotent setup.
# For now: the distributed runtime's smoke job on 2 ranks under weftrun, each
# rank printing what it computed. Extra arguments go to `weft smoke`.
#
#   bash tools/run.sh [--device cpu|cuda|auto]
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash tools/setup.sh
bazel build //:weft //:weftrun
exec bazel-bin/weftrun --standalone --nproc-per-node 2 bazel-bin/weft smoke "$@"
