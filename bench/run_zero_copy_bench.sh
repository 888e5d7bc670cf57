#!/usr/bin/env bash
# Zero-copy loading on this machine, side by side in one run (bench/README.md,
# "Zero-copy loading"), page cache warm, whole processes timed from outside
# (wall seconds, medians over ROUNDS):
#   cat              reading the checkpoint's files to /dev/null
#   weft forward     one token, end to end (start, load, forward, write logits):
#                    zero-copy (the default) and --no-zero-copy
#   transformers     the same in Python: import, from_pretrained, one forward
#   first token      weft generate --max-new-tokens 1 vs transformers'
#                    from_pretrained + generate(max_new_tokens=1), end to end
#   4 ranks          4 processes of one node holding the model at once
#                    (bench/load_bench --hold, every weight read once): their
#                    summed RSS and PSS (shared page-cache pages divided among
#                    the processes that map them), zero-copy vs copy
# The model: a Llama of 2048 hidden, 12 layers, fp32 (2.6 GB, 5 files;
# bench/make_checkpoint.py), loaded as float32 (its own dtype: zero-copy
# applies; a bf16 request would convert, i.e. copy).
#
#   bash bench/run_zero_copy_bench.sh [ROUNDS=3] [DIR=/tmp/weft-bench/llama-fp32]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
rounds="${1:-3}"
dir="${2:-/tmp/weft-bench/llama-fp32}"
bash tools/setup.sh >/dev/null
bazel build //:weft //bench:load_bench >/dev/null 2>&1
py="$root/.venv/bin/python"
"$py" bench/make_checkpoint.py "$dir" --layers 12 --dtype float32 >/dev/null
files=("$dir"/*.safetensors)
work="$dir.zero_copy"
rm -rf "$work"
mkdir -p "$work"
cat "${files[@]}" >/dev/null  # warm the page cache
wall() {  # name, command...: appends "name seconds" (wall, whole process)
  local name="$1"; shift
  /usr/bin/time -f "%e %M" -o "$work/time" "$@" >"$work/$name.out" 2>"$work/$name.err" ||
    { echo "$name failed:" >&2; tail -3 "$work/$name.err" >&2; exit 1; }
  echo "$name $(cat "$work/time")" >>"$work/walls"
}
transformers_forward='
import sys, torch, transformers
m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
with torch.no_grad(): m(input_ids=torch.tensor([[1]]))'
transformers_first_token='
import sys, torch, transformers
m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
ids = torch.tensor([[1, 2, 3]])
with torch.no_grad(): print(m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False)[0].tolist())'
: >"$work/walls"
for ((round = 1; round <= rounds; round++)); do
  echo "round $round/$rounds" >&2
  wall cat sh -c "cat ${files[*]} >/dev/null"
  wall weft_forward bazel-bin/weft forward --model "$dir" --prompt-ids 1 --output "$work/logits.safetensors"
  wall weft_forward_copy bazel-bin/weft forward --model "$dir" --prompt-ids 1 --output "$work/logits.safetensors" --no-zero-copy
  wall transformers_forward "$py" -c "$transformers_forward" "$dir"
  wall weft_first_token bazel-bin/weft generate --model "$dir" --prompt-ids 1,2,3 --max-new-tokens 1
  wall transformers_first_token "$py" -c "$transformers_first_token" "$dir"
done
# 4 processes holding the model at once: RSS and PSS summed over them.
hold() {  # zero-copy 0|1
  local pids=()
  for r in 0 1 2 3; do
    bazel-bin/bench/load_bench --model "$dir" --zero-copy "$1" --hold 40 >"$work/hold$1.$r" &
    pids+=($!)
  done
  until [[ $(cat "$work"/hold"$1".* 2>/dev/null | grep -c checksum) -eq 4 ]]; do sleep 1; done
  local rss=0 pss=0
  for p in "${pids[@]}"; do
    rss=$((rss + $(awk '/^Rss:/{print $2}' /proc/"$p"/smaps_rollup)))
    pss=$((pss + $(awk '/^Pss:/{print $2}' /proc/"$p"/smaps_rollup)))
  done
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  echo "hold$1 $rss $pss" >>"$work/walls"
}
hold 1
hold 0
"$py" - "$work/walls" "$dir" <<'PY'
import os, statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
size = sum(os.path.getsize(os.path.join(sys.argv[2], f)) for f in os.listdir(sys.argv[2])
           if f.endswith(".safetensors"))
med = lambda name: statistics.median(float(r[1]) for r in rows if r[0] == name)
peak = lambda name: statistics.median(float(r[2]) for r in rows if r[0] == name) / 1024
print(f"checkpoint {size / 1e9:.2f} GB fp32; wall seconds (median of {sum(r[0] == 'cat' for r in rows)}), peak RSS MB")
for name in ["cat", "weft_forward", "weft_forward_copy", "transformers_forward",
             "weft_first_token", "transformers_first_token"]:
    print(f"  {name:<26} {med(name):6.2f} s  {peak(name):7.0f} MB")
print(f"weft forward / cat: x{med('weft_forward') / med('cat'):.2f}; "
      f"transformers / weft forward: x{med('transformers_forward') / med('weft_forward'):.2f}; "
      f"--no-zero-copy / zero-copy: x{med('weft_forward_copy') / med('weft_forward'):.2f}")
print(f"first token: transformers / weft x{med('transformers_first_token') / med('weft_first_token'):.2f}")
for r in rows:
    if r[0].startswith("hold"):
        mode = "zero-copy" if r[0] == "hold1" else "copy"
        print(f"4 ranks holding the model, {mode:<9}: summed RSS {int(r[1]) / 1e6:.2f} GB, "
              f"summed PSS {int(r[2]) / 1e6:.2f} GB ({int(r[2]) * 1024 / size:.2f} copies of the files)")
PY
