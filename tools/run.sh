#!/usr/bin/env bash
# Runs weft's main job on its embedded default, after its own idempotent
# setup: examples/finetune_tiny (train a tiny byte-level Llama from scratch,
# then fine-tune it, TP=2 on two CPU ranks under weftrun; about two minutes).
# Extra arguments go to both `weft train` stages (e.g. --set train.steps=50).
#
#   bash tools/run.sh [--set key=value ...]
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash tools/setup.sh
bazel build //:weft //:weftrun
exec bash examples/finetune_tiny/run.sh "$@"
