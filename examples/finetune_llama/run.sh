#!/usr/bin/env bash
# Fine-tunes a Hugging Face checkpoint on your own text with TP=8 on one GPU
# node: tokenizes the data with the model's own tokenizer (once), then runs
# `weft train` on 8 ranks under weftrun. Extra arguments go to weft train;
# WEFT_CONFIG picks another config (cpu.yaml: 2 CPU ranks), NPROC_PER_NODE
# the number of ranks, WEFT_RUN_DIR the output directory.
#
#   bash examples/finetune_llama/run.sh MODEL_DIR DATA.jsonl|DATA.txt [--set key=value ...]
#   bash examples/finetune_llama/run.sh ~/models/Meta-Llama-3-8B corpus.jsonl --set train.steps=200
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
(($# >= 2)) || { sed -n 2,9p "$0"; exit 2; }
model="$1" data="$2"
shift 2
[[ -f "$model/config.json" ]] || { echo "run.sh: $model has no config.json (expected a Hugging Face checkpoint directory)" >&2; exit 2; }
out="${WEFT_RUN_DIR:-runs/finetune_llama}"
bash tools/setup.sh
bazel build //:weft //:weftrun
tokens="$out/data/$(basename "${data%.*}")"
if [[ ! -f "$tokens.idx" ]]; then
  mkdir -p "$out/data"
  .venv/bin/python tools/tokenize_data.py --tokenizer "$model" "$data" -o "$tokens"
fi
exec bazel-bin/weftrun --standalone --nproc-per-node "${NPROC_PER_NODE:-8}" \
  bazel-bin/weft train --config "${WEFT_CONFIG:-examples/finetune_llama/finetune.yaml}" \
  --set "model.pretrained=$model" --set "data.path=$tokens" --set "output_dir=$out" "$@"
