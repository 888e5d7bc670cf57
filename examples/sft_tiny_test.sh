#!/usr/bin/env bash
# examples/sft_tiny stays runnable: its data tokenizes with a loss mask and
# its sft.yaml trains (a few steps, on a base trained for a few steps) into a
# PEFT adapter, a merged export and a validation curve.
set -euo pipefail
weft="$PWD/weft"
weftrun="$PWD/weftrun"
source tests/testlib.sh
python="$(venv_python)" || exit 1
work="${TEST_TMPDIR:-$(mktemp -d)}/sft_tiny"
rm -rf "$work"
mkdir -p "$work"
"$python" tools/tokenize_data.py --byte-level examples/sft_tiny/data/tempest_replies.jsonl \
  -o "$work/data/tempest_replies" >"$work/tokenize.log"
grep -q "tokens in the loss" "$work/tokenize.log" || { cat "$work/tokenize.log"; exit 1; }
"$weft" train --config examples/finetune_tiny/pretrain.yaml --set parallel.tp=1 --set train.steps=3 \
  --set sample.max_new_tokens=0 --set "output_dir=$work/base" >"$work/base.log" 2>&1 ||
  { cat "$work/base.log"; exit 1; }
"$weftrun" --standalone --nproc-per-node 2 "$weft" train --config examples/sft_tiny/sft.yaml \
  --set "model.pretrained=$work/base/hf" --set "data.path=$work/data/tempest_replies" \
  --set "output_dir=$work/run" --set train.steps=4 --set eval.every=2 --set checkpoint.every=0 \
  --set sample.max_new_tokens=8 >"$work/sft.log" 2>&1 || { cat "$work/sft.log"; exit 1; }
for f in adapter/adapter_config.json adapter/adapter_model.safetensors hf/model.safetensors loss.svg; do
  [[ -f "$work/run/$f" ]] || { echo "FAIL: missing $work/run/$f"; cat "$work/sft.log"; exit 1; }
done
[[ "$(grep -c eval_loss "$work/run/metrics.jsonl")" == 2 ]] ||
  { echo "FAIL: expected 2 evaluations"; cat "$work/run/metrics.jsonl"; exit 1; }
"$weft" eval --model "$work/base/hf" --adapter "$work/run/adapter" --data "$work/data/tempest_replies" \
  --seq-len 256 --packing --batches 2 | grep -q "^eval: loss" || { echo "FAIL: weft eval --adapter"; exit 1; }
echo PASS
