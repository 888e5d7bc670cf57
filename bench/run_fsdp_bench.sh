#!/usr/bin/env bash
# Sharded data parallelism on this machine, side by side in one run
# (bench/README.md, "Sharded data parallelism"): the 124.7M-parameter Llama of
# bench/train_llama100m.json, fp32, AdamW, global batch 4 x 256 random
# tokens, 1 thread per rank under weftrun:
#   dp1                 one rank (the whole batch)
#   dp2                 2 replicas
#   dp_shard2           FSDP over 2 ranks (reshard_after_forward, the default)
#   dp_shard2-kept      the same, layers kept gathered from forward to backward
#   dp_shard4           FSDP over 4 ranks (4 processes on the 2 cores)
# "train peak" is rank 0's VmHWM at the last step (metrics.jsonl's
# peak_rss_mb: before the final checkpoint), "run peak" GNU time's %M over
# the whole run (the largest rank, the final checkpoint included), next to
# the trainer's own
# estimate (its "[train] memory per rank" line) plus the 117 MB a CPU weft
# process holds before the model (bench/README.md, "Checkpoint loading"), and
# the model 16 P / N + activations. tokens/s over steps 2..STEPS from
# metrics.jsonl, and the share of time in collectives (comm_share).
#
#   bash bench/run_fsdp_bench.sh      # STEPS=5 SEQ=256
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
steps="${STEPS:-5}"
seq="${SEQ:-256}"
batch=4
quiet_wait="${QUIET_WAIT:-900}"
work=/tmp/weft-bench/train
py=.venv/bin/python

source bench/train_bench_lib.sh
bench_prepare "$work" "$py" "$steps" "$batch" "$seq"

results="$work/fsdp_results.jsonl"
: >"$results"

run_one() {  # name, ranks, then the extra --set flags
  local name="$1" ranks="$2"; shift 2
  wait_quiet
  local out="$work/fsdp-$name"
  rm -rf "$out"
  mkdir -p "$out"
  OMP_NUM_THREADS=1 /usr/bin/time -f "%M" -o "$out.time" bazel-bin/weftrun --standalone \
    --nproc-per-node "$ranks" bazel-bin/weft train --config bench/train_bench.yaml "${sets[@]}" \
    --set "output_dir=$out" "$@" >"$out.log" 2>&1 || {
    echo "$name failed:" >&2; tail -5 "$out.log" >&2; exit 1; }
  "$py" - "$name" "$out" "$((batch * seq))" "$ranks" >>"$results" <<'PY'
import json, re, sys
name, out, per_step, ranks = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rows = [json.loads(l) for l in open(out + "/metrics.jsonl")]
seconds = rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]
units = {"B": 1 / 2**20, "KiB": 1 / 1024, "MiB": 1, "GiB": 1024}
line = [l for l in open(out + ".log") if "memory per rank" in l][0]
total = re.search(r"total ~([0-9.]+) (\w+)", line)
print(json.dumps({"name": name, "ranks": ranks,
    "tokens_per_s": per_step * (rows[-1]["step"] - rows[0]["step"]) / seconds,
    "comm_share": sum(r["comm_share"] for r in rows[1:]) / max(1, len(rows) - 1),
    "peak_rss_mb": int(open(out + ".time").read().split()[0]) / 1024,
    "train_peak_rss_mb": rows[-1]["peak_rss_mb"],
    "estimate_mb": float(total.group(1)) * units[total.group(2)], "last_loss": rows[-1]["loss"]}))
PY
  tail -1 "$results" >&2
}

echo "uptime: $(uptime)" >&2
run_one dp1 1
run_one dp2 2 --set parallel.dp=2
run_one dp_shard2 2 --set parallel.dp_shard=2
run_one dp_shard2-kept 2 --set parallel.dp_shard=2 --set parallel.reshard_after_forward=false
run_one dp_shard4 4 --set parallel.dp_shard=4

"$py" - "$results" "$batch" "$seq" "$steps" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
batch, seq, steps = sys.argv[2:5]
P = 124_668_672
base = 117  # MB resident before the model
print(f"model 124.7M Llama fp32, global batch {batch} x {seq} tokens, 1 thread per rank, steps 2..{steps}")
print(f"{'config':<15} {'tokens/s':>8} {'comm':>5} {'train peak':>10} {'estimate+117':>12} {'16P/N':>7} "
      f"{'run peak':>9} {'loss':>8}")
for r in rows:
    shards = r["ranks"] if r["name"].startswith("dp_shard") else 1
    print(f"{r['name']:<15} {r['tokens_per_s']:8.1f} {r['comm_share']:5.2f} "
          f"{r['train_peak_rss_mb']:8.0f}MB {r['estimate_mb'] + base:10.0f}MB "
          f"{16 * P / shards / 2**20:5.0f}MB {r['peak_rss_mb']:7.0f}MB {r['last_loss']:8.4f}")
PY
