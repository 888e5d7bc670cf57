#!/usr/bin/env bash
# LoRA in PEFT's format, both ways: an adapter weft trains at TP=2 loads in
# PEFT on top of the base in transformers with weft's logits, and its merged
# export equals it; an adapter PEFT makes loads in weft (one process and
# TP=2) with PEFT's logits.
set -euo pipefail
weft="$PWD/weft"
weftrun="$PWD/weftrun"
check="$PWD/trainer/peft_check.py"
source tests/testlib.sh
python="$(venv_python)" || exit 1
work="${TEST_TMPDIR:-$(mktemp -d)}/peft"
rm -rf "$work"
mkdir -p "$work"
"$python" "$check" base "$work/base"
"$python" "$check" ids "$work/ids.safetensors"
for i in $(seq 1 60); do echo "To be, or not to be, that is the question $i."; done >"$work/text.txt"
cat >"$work/run.yaml" <<YAML
model: {pretrained: $work/base}
parallel: {tp: 2}
data: {text: $work/text.txt, seq_len: 32}
train: {steps: 8, global_batch: 4, device: cpu}
optimizer: {lr: 1.0e-2}
lora: {r: 4, alpha: 16, target_modules: [q_proj, v_proj, o_proj, down_proj]}
checkpoint: {merge_lora: true}
output_dir: $work/run
YAML
"$weftrun" --standalone --nproc-per-node 2 "$weft" train --config "$work/run.yaml" >"$work/train.log" 2>&1 ||
  { cat "$work/train.log"; exit 1; }
grep -q "exported the LoRA adapter" "$work/train.log" || { cat "$work/train.log"; exit 1; }
adapter="$work/run/adapter"
# weft's adapter in PEFT = weft's logits with it.
"$weft" forward --model "$work/base" --adapter "$adapter" --input "$work/ids.safetensors" \
  --output "$work/weft_adapter.safetensors" --attn eager
"$python" "$check" adapter-logits "$work/base" "$adapter" "$work/ids.safetensors" "$work/peft_adapter.safetensors"
"$python" "$check" compare "$work/weft_adapter.safetensors" "$work/peft_adapter.safetensors"
# The adapter changed the model, and the merged export is base + adapter.
"$python" "$check" model-logits "$work/base" "$work/ids.safetensors" "$work/base_logits.safetensors"
if "$python" "$check" compare "$work/base_logits.safetensors" "$work/peft_adapter.safetensors" 1e-3 >/dev/null 2>&1; then
  echo "FAIL: the trained adapter does not change the logits"; exit 1
fi
"$python" "$check" model-logits "$work/run/hf" "$work/ids.safetensors" "$work/merged.safetensors"
"$python" "$check" compare "$work/merged.safetensors" "$work/peft_adapter.safetensors"
# PEFT's adapter in weft, one process and TP=2.
"$python" "$check" make-adapter "$work/base" "$work/peft" "$work/ids.safetensors" "$work/peft_logits.safetensors"
"$weft" forward --model "$work/base" --adapter "$work/peft" --input "$work/ids.safetensors" \
  --output "$work/weft_peft.safetensors" --attn eager
"$python" "$check" compare "$work/weft_peft.safetensors" "$work/peft_logits.safetensors"
"$weftrun" --standalone --nproc-per-node 2 "$weft" forward --model "$work/base" --adapter "$work/peft" \
  --input "$work/ids.safetensors" --output "$work/weft_peft_tp2.safetensors" --tp-plan auto >"$work/tp.log" 2>&1 ||
  { cat "$work/tp.log"; exit 1; }
"$python" "$check" compare "$work/weft_peft_tp2.safetensors" "$work/peft_logits.safetensors"
# Generation with an adapter: greedy ids equal PEFT's generate().
got="$("$weft" generate --model "$work/base" --adapter "$work/peft" --prompt-ids 84,111,32,98,101 \
  --max-new-tokens 8)"
want="$("$python" "$check" generate "$work/base" "$work/peft" 84,111,32,98,101 8)"
[[ "$got" == "$want" ]] || { echo "FAIL: generate --adapter: weft $got, PEFT $want"; exit 1; }
echo PASS
