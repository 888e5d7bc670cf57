#!/usr/bin/env bash
# PyTorch's own torchrun (the venv's torch.distributed.run) starts weft: its
# agent hosts the store (TORCHELASTIC_USE_AGENT_STORE), a TP=2 forward equals
# TP=1, a failure reaches torchrun's summary through TORCHELASTIC_ERROR_FILE,
# and `weft train` under --max-restarts 1 with its workers killed resumes
# from the latest checkpoint.
set -uo pipefail
weft="$PWD/weft"
source tests/testlib.sh
python="$(venv_python)" || exit 1
work="${TEST_TMPDIR:-$(mktemp -d)}/torchrun"
rm -rf "$work"
mkdir -p "$work"
failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
torchrun() { timeout -k 5 240 "$python" -m torch.distributed.run --standalone --no-python "$@"; }

# 1. TP=2 forward under torchrun equals TP=1.
"$python" -c "
import torch; from safetensors.torch import save_file
save_file({'input_ids': torch.arange(16, dtype=torch.int64).view(2, 8)}, '$work/in.safetensors')"
torchrun --nproc-per-node 2 "$weft" forward --model tests/data/hf/llama --tp-plan auto \
  --input "$work/in.safetensors" --output "$work/tp2.safetensors" >"$work/tp2.log" 2>&1 ||
  fail "TP=2 forward under torchrun exited $?: $(cat "$work/tp2.log")"
"$weft" forward --model tests/data/hf/llama --input "$work/in.safetensors" \
  --output "$work/tp1.safetensors" || fail "TP=1 forward exited $?"
diff="$("$python" -c "
from safetensors.torch import load_file
a = load_file('$work/tp1.safetensors')['logits']; b = load_file('$work/tp2.safetensors')['logits']
print(float((a - b).abs().max()))" 2>&1)"
"$python" -c "import sys; sys.exit(0 if float('$diff') < 1e-5 else 1)" 2>/dev/null ||
  fail "TP=2 logits under torchrun differ from TP=1 by $diff"

# 1b. PP=2 forward (one stage per rank) under torchrun equals one process.
torchrun --nproc-per-node 2 "$weft" forward --model tests/data/hf/llama --pp-plan auto \
  --input "$work/in.safetensors" --output "$work/pp2.safetensors" >"$work/pp2.log" 2>&1 ||
  fail "PP=2 forward under torchrun exited $?: $(cat "$work/pp2.log")"
diff="$("$python" -c "
from safetensors.torch import load_file
a = load_file('$work/tp1.safetensors')['logits']; b = load_file('$work/pp2.safetensors')['logits']
print(float((a - b).abs().max()))" 2>&1)"
"$python" -c "import sys; sys.exit(0 if float('$diff') < 1e-5 else 1)" 2>/dev/null ||
  fail "PP=2 logits under torchrun differ from PP=1 by $diff"

# 2. A failure is one line in torchrun's summary (torch's @record contract).
torchrun --nproc-per-node 2 "$weft" forward --model "$work/nonexistent" --tp-plan auto \
  --input "$work/in.safetensors" --output "$work/x.safetensors" >"$work/fail.log" 2>&1
rc=$?
[[ $rc -ne 0 ]] || fail "a failing forward under torchrun exited 0"
grep -q "traceback : weft forward: $work/nonexistent/config.json: cannot read (expected a config.json)" \
  "$work/fail.log" || fail "torchrun's summary lacks weft's error line: $(cat "$work/fail.log")"

# 3. weft train under --max-restarts 1: both workers die while saving step 4
#    (first attempt only); torchrun restarts them and they resume from step 2.
write_tiny_run "$work" "parallel: {tp: 2}
checkpoint: {every: 2, keep: 3}"
WEFT_TEST_KILL_DURING_SAVE=4 torchrun --nproc-per-node 2 --max-restarts 1 \
  "$weft" train --config "$work/run.yaml" >"$work/train.log" 2>&1 ||
  fail "weft train under torchrun --max-restarts 1 exited $?: $(tail -20 "$work/train.log")"
grep -q "resumed from $work/run/checkpoints/step_00000002 at step 2" "$work/train.log" ||
  fail "the restarted attempt did not resume from step 2: $(tail -20 "$work/train.log")"
[[ -d "$work/run/checkpoints/step_00000006" && -f "$work/run/hf/model.safetensors" ]] ||
  fail "the restarted run did not finish (no step 6 checkpoint or export)"

if ((failures > 0)); then echo "$failures check(s) failed"; exit 1; fi
echo "PASS"
