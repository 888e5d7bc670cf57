# Shared by bench/run_train_bench.sh and bench/run_pp_bench.sh: the model
# config and random tokens, and waiting for a quiet machine.
#   source bench/train_bench_lib.sh; prepare_train_data "$work" "$py"; wait_quiet

# The model config (weft wants a file named config.json) and 1M random tokens.
prepare_train_data() {  # work dir, python
  local work="$1" py="$2"
  mkdir -p "$work/llama100m"
  cp bench/train_llama100m.json "$work/llama100m/config.json"
  [[ -f "$work/tokens.idx" ]] && return 0
  "$py" - "$work/tokens" <<'EOF'
import struct, sys
import numpy as np
prefix = sys.argv[1]
n, docs, vocab = 1 << 20, 256, 32000
tokens = np.random.default_rng(0).integers(0, vocab, size=n, dtype=np.uint16)
starts = np.linspace(0, n, docs + 1).astype(np.uint64)
tokens.tofile(prefix + ".bin")
with open(prefix + ".idx", "wb") as f:
    f.write(b"WEFTTOK1" + struct.pack("<IIQQQ", 1, 2, vocab, n, docs) + starts.tobytes())
EOF
}

# Busy CPU seconds of the whole machine so far (all cores, /proc/stat).
busy_s() { awk '/^cpu /{printf "%.2f\n", ($2+$3+$4+$7+$8)/100}' /proc/stat; }
# The machine is quiet when no cc1plus runs and it used < 0.3 cores over 5 s.
quiet() {
  pgrep -x cc1plus >/dev/null && return 1
  local a b; a=$(busy_s); sleep 5; b=$(busy_s)
  awk -v a="$a" -v b="$b" 'BEGIN{exit !((b - a) / 5 < 0.3)}'
}
wait_quiet() {  # up to ${quiet_wait:-900} s
  local t0=$SECONDS limit="${quiet_wait:-900}"
  until quiet; do
    if ((SECONDS - t0 >= limit)); then
      echo "  WARNING: not quiet after ${limit}s; measuring anyway" >&2; return 0
    fi
    sleep 10
  done
  ((SECONDS - t0 <= 5)) || echo "  (waited $((SECONDS - t0))s for a quiet machine)" >&2
}

# The binaries, the data, and the --set flags every weft run of a benchmark
# takes (the array `sets`).
bench_prepare() {  # work dir, python, steps, global batch, seq len
  [[ -x bazel-bin/weft && -x bazel-bin/weftrun ]] || bazel build //:weft //:weftrun
  prepare_train_data "$1" "$2"
  sets=(--set "model.config=$1/llama100m/config.json" --set "data.path=$1/tokens"
    --set "train.steps=$3" --set "train.global_batch=$4" --set "data.seq_len=$5")
}
