#!/usr/bin/env bash
# Pipeline parallelism on this machine, side by side in one run
# (bench/README.md, "Pipeline parallelism"): the 124.7M-parameter Llama of
# bench/train_llama100m.json, fp32, AdamW, global batch 4 x 256 random tokens,
# 2 ranks x 1 thread under weftrun:
#   pp2-gpipe, pp2-1f1b, pp2-interleaved (2 stages per rank), pp2-zb1p
#                 parallel.pp 2, 4 micro-batches of 1 x 256, parallel.pp_trace
#   pp2-1f1b-balanced  1F1B with bench/pp_balanced.yaml (the head counted as 3 layers)
#   tp2           parallel.tp 2, the whole batch at once
#   dp2           parallel.dp 2, 2 sequences per rank
# For each PP run the measured bubble comes from the timestamps of every
# action (<output_dir>/pp_trace/rank*.jsonl, steps 2..STEPS): per step the
# span is the first action's start to the last one's end over both ranks, a
# rank's busy time is its actions' time minus what they spent waiting for a
# peer's tensor, and bubble = sum(span - busy) / sum(busy) (the simulator's
# idle / busy), next to the closed form and the unit-time simulation. Peak
# memory: each rank's VmHWM (PP runs, from the trace) and GNU time's %M (the
# largest rank). tokens/s over steps 2..STEPS from metrics.jsonl.
#
#   bash bench/run_pp_bench.sh [ROUNDS=1]      # STEPS=6 SEQ=256
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
rounds="${1:-1}"
steps="${STEPS:-6}"
seq="${SEQ:-256}"
batch=4
micro=4
quiet_wait="${QUIET_WAIT:-900}"
work=/tmp/weft-bench/train
py=.venv/bin/python

source bench/train_bench_lib.sh
bench_prepare "$work" "$py" "$steps" "$batch" "$seq"

results="$work/pp_results.jsonl"
: >"$results"

run_one() {  # name, then the extra --set flags
  local name="$1"; shift
  wait_quiet
  local out="$work/pp-$name"
  rm -rf "$out"
  mkdir -p "$out"
  OMP_NUM_THREADS=1 /usr/bin/time -f "%M" -o "$out.time" bazel-bin/weftrun --standalone \
    --nproc-per-node 2 bazel-bin/weft train --config bench/train_bench.yaml "${sets[@]}" \
    --set "output_dir=$out" "$@" >"$out.log" 2>&1 || {
    echo "$name failed:" >&2; tail -5 "$out.log" >&2; exit 1; }
  "$py" - "$name" "$out" "$((batch * seq))" >>"$results" <<'EOF'
import glob, json, re, sys
from collections import defaultdict
name, out, per_step = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = [json.loads(l) for l in open(out + "/metrics.jsonl")]
seconds = rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]
r = {"name": name, "tokens_per_s": per_step * (rows[-1]["step"] - rows[0]["step"]) / seconds,
     "last_loss": rows[-1]["loss"], "peak_rss_mb_largest": int(open(out + ".time").read().split()[0]) / 1024}
header = [l for l in open(out + ".log") if "[train] pipeline" in l]
if header:
    r["simulated_bubble"] = float(re.search(r"bubble ([0-9.]+)", header[0]).group(1))
traces = sorted(glob.glob(out + "/pp_trace/rank*.jsonl"))
if traces:
    actions = defaultdict(list)  # step -> [(pp_rank, start, end, wait, action)]
    rss = {}
    for path in traces:
        for line in open(path):
            e = json.loads(line)
            if "peak_rss_mb" in e:
                rss[e["pp_rank"]] = e["peak_rss_mb"]
            else:
                actions[e["step"]].append(e)
    idle = busy = 0.0
    per_rank = defaultdict(float)
    measured = [s for s in actions if s != 1]  # step 1 is warm-up
    for step in measured:
        acts = actions[step]
        span = max(a["end"] for a in acts) - min(a["start"] for a in acts)
        for rank in {a["pp_rank"] for a in acts}:
            b = sum(a["end"] - a["start"] - a["wait"] for a in acts
                    if a["pp_rank"] == rank and a["action"] != "send")
            busy += b
            idle += span - b
            per_rank[rank] += b / len(measured)
    r["measured_bubble"] = idle / busy
    r["busy_s_per_step_per_rank"] = [round(per_rank[k], 2) for k in sorted(per_rank)]
    r["peak_rss_mb_per_pp_rank"] = [round(rss[k]) for k in sorted(rss)]
print(json.dumps(r))
EOF
  tail -1 "$results" >&2
}

pp=(--set parallel.pp=2 --set "parallel.pp_microbatches=$micro" --set parallel.pp_trace=true)
echo "uptime: $(uptime)" >&2
for ((r = 1; r <= rounds; ++r)); do
  echo "== round $r/$rounds ==" >&2
  run_one pp2-gpipe "${pp[@]}" --set parallel.pp_schedule=gpipe
  run_one pp2-1f1b "${pp[@]}" --set parallel.pp_schedule=1f1b
  run_one pp2-interleaved "${pp[@]}" --set parallel.pp_schedule=interleaved_1f1b
  run_one pp2-zb1p "${pp[@]}" --set parallel.pp_schedule=zb1p
  run_one pp2-1f1b-balanced "${pp[@]}" --set parallel.pp_schedule=1f1b \
    --set parallel.pp_plan=bench/pp_balanced.yaml
  run_one tp2 --set parallel.tp=2
  run_one dp2 --set parallel.dp=2
done

"$py" - "$results" "$batch" "$seq" "$steps" "$micro" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
batch, seq, steps, m = sys.argv[2:6]
m = int(m)
names = list(dict.fromkeys(r["name"] for r in rows))
med = lambda n, k: statistics.median(r[k] for r in rows if r["name"] == n)
closed = {"pp2-gpipe": 1 / m, "pp2-1f1b": 1 / m, "pp2-interleaved": 1 / (2 * m), "pp2-zb1p": None,
          "pp2-1f1b-balanced": 1 / m}
ref = med("tp2", "tokens_per_s")
print(f"model 124.7M Llama fp32, global batch {batch} x {seq} tokens, 2 ranks x 1 thread, "
      f"steps 2..{steps}; medians of {len(rows) // len(names)} round(s)")
print(f"{'config':<16} {'tokens/s':>8} {'x tp2':>6} {'bubble':>7} {'closed':>7} {'unit-sim':>8} "
      f"{'busy s/step/rank':>16} {'peak RSS/rank (MiB)':>20} {'largest':>8} {'loss':>8}")
for n in names:
    rs = [r for r in rows if r["name"] == n]
    bub = f"{med(n, 'measured_bubble'):.3f}" if "measured_bubble" in rs[0] else "-"
    sim = f"{med(n, 'simulated_bubble'):.3f}" if "simulated_bubble" in rs[0] else "-"
    cl = closed.get(n)
    per_rank = "/".join(str(x) for x in rs[-1].get("peak_rss_mb_per_pp_rank", [])) or "-"
    busy = "/".join(str(x) for x in rs[-1].get("busy_s_per_step_per_rank", [])) or "-"
    print(f"{n:<16} {med(n, 'tokens_per_s'):8.1f} {med(n, 'tokens_per_s') / ref:6.2f} {bub:>7} "
          f"{(f'{cl:.3f}' if cl is not None else '-'):>7} {sim:>8} {busy:>16} {per_rank:>20} "
          f"{med(n, 'peak_rss_mb_largest'):8.0f} {med(n, 'last_loss'):8.4f}")
EOF
