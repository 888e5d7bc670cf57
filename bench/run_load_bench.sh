#!/usr/bin/env bash
# The loading benchmark, side by side in one run (file cache warm):
#   the physical limits (a plain sequential read loop into a reused buffer, and
#   into fresh memory; backing fresh memory alone, reading nothing),
#   safetensors.torch.load_file,
#   transformers' from_pretrained, and weft's loader at TP=1, 2 and 4 (per rank).
#
#   bash bench/run_load_bench.sh [ROUNDS=3] [DIR=/tmp/weft-bench/tinyllama]
#
# Prints a table of medians over ROUNDS; raw JSON lines go to $DIR.results.jsonl.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
rounds="${1:-3}"
dir="${2:-/tmp/weft-bench/tinyllama}"
bash tools/setup.sh >/dev/null
bazel build //bench:seqread //bench:load_bench >/dev/null 2>&1
py="$root/.venv/bin/python"
"$py" bench/make_checkpoint.py "$dir"
files=("$dir"/*.safetensors)
out="$dir.results.jsonl"
: >"$out"
cat "${files[@]}" >/dev/null  # warm the page cache
for ((round = 1; round <= rounds; round++)); do
  echo "round $round/$rounds" >&2
  { printf '{"who": "seqread", '; bazel-bin/bench/seqread "${files[@]}" | cut -c2-; } >>"$out"
  { printf '{"who": "seqread-fresh", '; bazel-bin/bench/seqread --fresh "${files[@]}" | cut -c2-; } >>"$out"
  { printf '{"who": "populate-only", '; bazel-bin/bench/seqread --populate "${files[@]}" | cut -c2-; } >>"$out"
  for peer in safetensors-lazy safetensors transformers; do
    "$py" bench/peers.py "$peer" "$dir" 2>/dev/null | sed 's/^{/{"who": "'"$peer"'", /' >>"$out"
  done
  for tp in 1 2 4; do
    for ((rank = 0; rank < tp; rank++)); do
      bazel-bin/bench/load_bench --model "$dir" --tp "$tp" --rank "$rank" |
        sed 's/^{/{"who": "weft", /' >>"$out"
    done
  done
done
"$py" bench/summarize_load_bench.py "$out"
