#!/usr/bin/env bash
# `weft eval` equals transformers' mean loss over the counted labels of
# instruction data tokenized by tools/tokenize_data.py (prompt/completion:
# the completion only; chats: the assistant turns only), in windows and
# packed (each document as if alone), and at TP=2 under weftrun.
set -euo pipefail
weft="$PWD/weft"
weftrun="$PWD/weftrun"
ref="$PWD/cli/eval_reference.py"
source tests/testlib.sh
python="$(venv_python)" || exit 1
work="${TEST_TMPDIR:-$(mktemp -d)}/eval"
rm -rf "$work"
mkdir -p "$work"
tok=tests/data/tokens/tokenizer
vocab="$("$python" -c "import os; os.environ['HF_HUB_OFFLINE']='1'; import transformers as t; print(len(t.AutoTokenizer.from_pretrained('$tok')))")"
"$python" "$ref" model "$work/model" "$vocab"
for i in $(seq 1 24); do
  printf '{"prompt": "Question %d: what does the fox do?", "completion": " It jumps %d times over the dog."}\n' "$i" "$i"
done >"$work/pc.jsonl"
for i in $(seq 1 12); do
  printf '{"messages": [{"role": "user", "content": "Say %d."}, {"role": "assistant", "content": "%d, said the fox."}, {"role": "user", "content": "Again."}, {"role": "assistant", "content": "Fox %d."}]}\n' "$i" "$i" "$i"
done >"$work/chat.jsonl"
"$python" tools/tokenize_data.py --tokenizer "$tok" "$work/pc.jsonl" -o "$work/pc" >/dev/null
"$python" tools/tokenize_data.py --tokenizer tests/data/tokens/chat_tokenizer --assistant-only-loss \
  "$work/chat.jsonl" -o "$work/chat" >/dev/null
[[ -f "$work/pc.mask" && -f "$work/chat.mask" ]] || { echo "FAIL: no loss masks written"; exit 1; }

# "eval: loss X, ..." -> X
weft_loss() { sed -n 's/^\(\[rank0\]:\)\{0,1\}eval: loss \([0-9.]*\),.*/\2/p'; }
check() {  # name, weft's loss, reference loss
  "$python" -c "import sys; a, b = float('$2'), float('$3'); sys.exit(0 if abs(a - b) < 2e-5 else 1)" ||
    { echo "FAIL: $1: weft eval $2, transformers $3"; exit 1; }
}
for data in pc chat; do
  want="$("$python" "$ref" loss "$work/model" "$work/$data" 32 | cut -d' ' -f1)"
  got="$("$weft" eval --model "$work/model" --data "$work/$data" --seq-len 32 --batch 4 --attn eager | weft_loss)"
  check "$data windows" "$got" "$want"
  want_packed="$("$python" "$ref" loss "$work/model" "$work/$data" 64 --packed | cut -d' ' -f1)"
  got_packed="$("$weft" eval --model "$work/model" --data "$work/$data" --seq-len 64 --batch 3 --packing | weft_loss)"
  check "$data packed" "$got_packed" "$want_packed"
done
# TP=2: the same figure, printed once (rank 0).
out="$("$weftrun" --standalone --nproc-per-node 2 "$weft" eval --model "$work/model" --data "$work/pc" \
  --seq-len 32 --batch 4 --tp-plan auto 2>"$work/tp.err")" || { cat "$work/tp.err"; exit 1; }
[[ "$(grep -c 'eval: loss' <<<"$out")" == 1 ]] || { echo "FAIL: tp 2 printed: $out"; exit 1; }
check "pc windows at tp 2" "$(weft_loss <<<"$out")" "$("$python" "$ref" loss "$work/model" "$work/pc" 32 | cut -d' ' -f1)"
# A bad data prefix: one line, exit 2, before the model loads.
set +e
"$weft" eval --model "$work/model" --data "$work/nope" 2>"$work/err.txt"
rc=$?
set -e
[[ $rc -eq 2 && "$(wc -l <"$work/err.txt")" -eq 1 ]] && grep -q "weft eval: token index $work/nope.idx" "$work/err.txt" ||
  { echo "FAIL: bad --data: exit $rc, stderr: $(cat "$work/err.txt")"; exit 1; }
echo PASS
