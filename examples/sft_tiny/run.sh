#!/usr/bin/env bash
# Instruction-tunes the main job's tiny byte-level Llama with LoRA (about two
# minutes on 2 CPU cores): tokenizes examples/sft_tiny/data/tempest_replies.jsonl
# (TRL's prompt/completion format; the loss mask covers the completions),
# trains a LoRA adapter at TP=2 with packing and a held-out eval set, then
# evaluates base and adapter with `weft eval`. Stage 1 of
# examples/finetune_tiny (the base) runs first when runs/finetune_tiny has
# no export yet.
#
#   bash examples/sft_tiny/run.sh [--set key=value ...]   # extra args: the LoRA run
#
# Writes runs/sft_tiny/run/{adapter,hf,loss.svg,metrics.jsonl}: the PEFT
# adapter, the merged model, the train and validation curves.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
bash tools/setup.sh
bazel build //:weft //:weftrun
out="${WEFT_RUN_DIR:-runs/sft_tiny}"
base="${WEFT_SFT_BASE:-runs/finetune_tiny/pretrain/hf}"
python=.venv/bin/python
weftrun=(bazel-bin/weftrun --standalone --nproc-per-node 2)
start=$SECONDS
if [[ ! -f "$base/model.safetensors" ]]; then
  echo "== the base: stage 1 of examples/finetune_tiny =="
  rm -rf runs/finetune_tiny/pretrain
  "${weftrun[@]}" bazel-bin/weft train --config examples/finetune_tiny/pretrain.yaml
  base=runs/finetune_tiny/pretrain/hf
fi
echo "== tokenize (byte-level; the loss mask covers the completions) =="
rm -rf "$out/run"
"$python" tools/tokenize_data.py --byte-level examples/sft_tiny/data/tempest_replies.jsonl \
  -o "$out/data/tempest_replies"
echo "== LoRA fine-tuning (examples/sft_tiny/sft.yaml) =="
"${weftrun[@]}" bazel-bin/weft train --config examples/sft_tiny/sft.yaml \
  --set "model.pretrained=$base" --set "data.path=$out/data/tempest_replies" \
  --set "output_dir=$out/run" "$@"
echo "== weft eval on every exchange (packed; the eval set is 10 % of them) =="
echo -n "base:         "
bazel-bin/weft eval --model "$base" --data "$out/data/tempest_replies" --seq-len 256 --packing
echo -n "with adapter: "
bazel-bin/weft eval --model "$base" --adapter "$out/run/adapter" \
  --data "$out/data/tempest_replies" --seq-len 256 --packing
echo "== done in $((SECONDS - start)) s: $out/run/{adapter,hf,loss.svg,metrics.jsonl} =="
