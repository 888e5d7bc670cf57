#!/usr/bin/env bash
# weft's main job: train a tiny byte-level Llama from scratch on A Midsummer
# Night's Dream, then fine-tune it on The Tempest, each stage tensor-parallel
# over 2 CPU ranks (TP=2) under weftrun. Prints a greedy sample before and
# after each stage; writes checkpoints, metrics.jsonl, loss.svg and a
# Hugging Face checkpoint per stage under runs/finetune_tiny/.
#
#   bash examples/finetune_tiny/run.sh [--set key=value ...]   # extra args: both stages
# (tools/run.sh builds weft first and then runs this.)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
out="${WEFT_RUN_DIR:-runs/finetune_tiny}"
# A new run each time: weft train refuses to mix a fresh run's checkpoints
# with an earlier run's (it would continue one only with --resume).
rm -rf "$out/pretrain" "$out/finetune"
weft=(bazel-bin/weftrun --standalone --nproc-per-node 2 bazel-bin/weft train)
start=$SECONDS

echo "== stage 1: train from scratch (examples/finetune_tiny/pretrain.yaml) =="
"${weft[@]}" --config examples/finetune_tiny/pretrain.yaml --set "output_dir=$out/pretrain" "$@"

echo "== stage 2: fine-tune (examples/finetune_tiny/finetune.yaml) =="
"${weft[@]}" --config examples/finetune_tiny/finetune.yaml \
  --set "model.pretrained=$out/pretrain/hf" --set "output_dir=$out/finetune" "$@"

echo "== done in $((SECONDS - start)) s: $out/{pretrain,finetune}/{hf,loss.svg,metrics.jsonl} =="
