#!/usr/bin/env bash
# Training throughput, side by side in one run (bench/README.md, "Training
# throughput"): a 124.7M-parameter Llama (bench/train_llama100m.json), fp32,
# AdamW, grad_clip 1.0, batch 2 x 256 tokens, random tokens:
#   weft tp=1     one process, OMP_NUM_THREADS=2           (bench/train_bench.yaml)
#   weft tp=2     weftrun, 2 processes x 1 thread
#   pytorch t=2   transformers LlamaForCausalLM + torch.optim.AdamW, 2 threads
#   pytorch t=1   the same, 1 thread (PT1=0 skips it)
# tokens/s over steps 2..STEPS (step 1 is warm-up): weft's from metrics.jsonl
# (elapsed_s of the last step minus that of step 1), the peer's from its own
# clock; peak RSS is the largest process's (GNU time %M: for weftrun, the
# largest rank). Before each run the script waits (up to QUIET_WAIT s) until
# the machine is quiet (no cc1plus, < 0.3 cores busy over 5 s) and reports
# "other CPU s": CPU seconds used by other processes during the run (/proc/stat).
#
#   bash bench/run_train_bench.sh [ROUNDS=2]      # STEPS=8 BATCH=2 SEQ=256 PT1=1
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
rounds="${1:-2}"
steps="${STEPS:-8}"
batch="${BATCH:-2}"
seq="${SEQ:-256}"
pt1="${PT1:-1}"
quiet_wait="${QUIET_WAIT:-900}"
work=/tmp/weft-bench/train
py=.venv/bin/python

source bench/train_bench_lib.sh
bench_prepare "$work" "$py" "$steps" "$batch" "$seq"

results="$work/results.jsonl"
: >"$results"

run_one() {  # name, then the command
  local name="$1"; shift
  wait_quiet
  local out="$work/$name"
  rm -rf "$out"; mkdir -p "$out"
  local b0; b0=$(busy_s)
  /usr/bin/time -f "%M %U %S %e" -o "$out/time" "$@" >"$out/log" 2>&1 || {
    echo "$name failed:" >&2; tail -5 "$out/log" >&2; exit 1; }
  "$py" - "$name" "$out" "$b0" "$(busy_s)" "$((batch * seq))" >>"$results" <<'EOF'
import json, sys
name, out, b0, b1, per_step = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
rss_kb, user, sys_, wall = open(out + "/time").read().split()[:4]
cpu = float(user) + float(sys_)
# other_cpu_s: CPU seconds the rest of the machine used during the run.
r = {"name": name, "process_wall_s": float(wall), "cpu_s": cpu,
     "other_cpu_s": round(max(0.0, b1 - b0 - cpu), 1), "peak_rss_mb": int(rss_kb) / 1024}
if name.startswith("weft"):
    rows = [json.loads(l) for l in open(out + "/metrics.jsonl")]
    measured = rows[-1]["step"] - rows[0]["step"]
    seconds = rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]
    r.update(tokens_per_s=per_step * measured / seconds, s_per_step=seconds / measured,
             first_step_s=rows[0]["elapsed_s"], last_loss=rows[-1]["loss"])
else:
    p = json.loads([l for l in open(out + "/log") if l.startswith("{")][-1])
    r.update(tokens_per_s=p["tokens_per_s"], s_per_step=p["s_per_step"],
             first_step_s=p["first_step_s"], last_loss=p["last_loss"], phases_s=p["phases_s"])
print(json.dumps(r))
EOF
  tail -1 "$results" >&2
}

echo "uptime: $(uptime)" >&2
for ((r = 1; r <= rounds; ++r)); do
  echo "== round $r/$rounds ==" >&2
  OMP_NUM_THREADS=2 run_one weft-tp1 bazel-bin/weft train --config bench/train_bench.yaml \
    "${sets[@]}" --set parallel.tp=1 --set "output_dir=$work/weft-tp1"
  OMP_NUM_THREADS=1 run_one weft-tp2 bazel-bin/weftrun --standalone --nproc-per-node 2 \
    bazel-bin/weft train --config bench/train_bench.yaml "${sets[@]}" --set parallel.tp=2 \
    --set "output_dir=$work/weft-tp2"
  run_one pytorch-t2 "$py" bench/train_loop.py --config "$work/llama100m/config.json" \
    --data "$work/tokens" --seq-len "$seq" --batch "$batch" --steps "$steps" --threads 2
  if [[ "$pt1" == 1 ]]; then
    run_one pytorch-t1 "$py" bench/train_loop.py --config "$work/llama100m/config.json" \
      --data "$work/tokens" --seq-len "$seq" --batch "$batch" --steps "$steps" --threads 1
  fi
done

"$py" - "$results" "$batch" "$seq" "$steps" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
batch, seq, steps = sys.argv[2:5]
names = list(dict.fromkeys(r["name"] for r in rows))
med = lambda name, k: statistics.median(r[k] for r in rows if r["name"] == name)
ref = med("pytorch-t2", "tokens_per_s")
print(f"model 124.7M Llama fp32, batch {batch} x {seq} tokens, steps 2..{steps} measured; "
      f"medians of {len(rows) // len(names)} rounds")
print(f"{'config':<12} {'tokens/s':>9} {'runs':>15} {'x pt-t2':>8} {'s/step':>7} "
      f"{'step1 s':>8} {'peak RSS':>9} {'other CPU s':>11}")
for n in names:
    runs = "/".join(f"{r['tokens_per_s']:.1f}" for r in rows if r["name"] == n)
    print(f"{n:<12} {med(n, 'tokens_per_s'):9.1f} {runs:>15} {med(n, 'tokens_per_s') / ref:8.2f} "
          f"{med(n, 's_per_step'):7.2f} {med(n, 'first_step_s'):8.2f} "
          f"{med(n, 'peak_rss_mb') / 1024:8.2f}G "
          f"{'/'.join(str(r['other_cpu_s']) for r in rows if r['name'] == n):>11}")
for n in names:
    ph = [r["phases_s"] for r in rows if r["name"] == n and "phases_s" in r]
    if ph:
        print(f"{n} phases (s/step, median): " + ", ".join(
            f"{k} {statistics.median(p[k] for p in ph):.2f}" for k in ph[0]))
EOF
