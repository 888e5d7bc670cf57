#!/usr/bin/env bash
# Fine-tuning on this machine, side by side in one run (bench/README.md,
# "LoRA and packing"): the 124.7M-parameter Llama of
# bench/train_llama100m.json, fp32, AdamW, 1 rank, 1 thread, global batch
# 4 x 256, STEPS steps:
#   full         full fine-tuning (every weight trained), random tokens
#   lora         LoRA r 16, alpha 32 on every projection (q, k, v, o, gate,
#                up, down), the same tokens
#   lora-padded  LoRA on documents of mixed length (16..256 tokens,
#                log-normal around 90), one document per row padded to 256
#                (pads masked out of the loss: TRL's default collation)
#   lora-packed  the same documents packed by best-fit decreasing
#                (data.packing)
#   peers        the same model, batch and steps in a plain PyTorch/
#                transformers loop (bench/train_loop.py, 1 thread): full
#                fine-tuning, and PEFT's LoRA (r 16, alpha 32, the same seven
#                projections) on the same random tokens
# tokens/s counts every position of a row (metrics.jsonl); "useful" counts
# document tokens only (the rows' fill); "train peak" is the VmHWM at the
# last step, "run peak" GNU time's %M over the whole run.
#
#   bash bench/run_sft_bench.sh      # STEPS=6
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
steps="${STEPS:-6}"
seq=256
batch=4
quiet_wait="${QUIET_WAIT:-900}"
work=/tmp/weft-bench/train
py=.venv/bin/python

source bench/train_bench_lib.sh
bench_prepare "$work" "$py" "$steps" "$batch" "$seq"

# Documents of mixed length: packed as they are, or each padded to seq_len.
"$py" - "$work" "$seq" <<'PY'
import struct, sys
import numpy as np
work, seq = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(1)
lengths = np.clip(rng.lognormal(np.log(90), 0.6, 4000).astype(np.int64), 16, seq)
def write(prefix, docs, masks):
    tokens = np.concatenate(docs).astype(np.uint16)
    starts = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.uint64)
    tokens.tofile(prefix + ".bin")
    with open(prefix + ".idx", "wb") as f:
        f.write(b"WEFTTOK1" + struct.pack("<IIQQQ", 1, 2, 32000, len(tokens), len(docs)) + starts.tobytes())
    with open(prefix + ".mask", "wb") as f:
        f.write(b"WEFTMSK1" + struct.pack("<Q", len(tokens)) + np.concatenate(masks).astype(np.uint8).tobytes())
docs = [rng.integers(0, 32000, n) for n in lengths]
write(work + "/docs", docs, [np.ones(n) for n in lengths])
# Padded: each document then pad tokens (id 0) up to seq_len, masked out.
write(work + "/docs_padded", [np.concatenate([d, np.zeros(seq - len(d), np.int64)]) for d in docs],
      [np.concatenate([np.ones(len(d)), np.zeros(seq - len(d))]) for d in docs])
print(f"{len(docs)} documents, {lengths.sum()} tokens, mean {lengths.mean():.0f}", file=sys.stderr)
PY

results="$work/sft_results.jsonl"
: >"$results"
lora=(--set lora.r=16 --set lora.alpha=32
  --set "lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]")

run_one() {  # name, then the extra --set flags
  local name="$1"; shift
  wait_quiet
  local out="$work/sft-$name"
  rm -rf "$out"
  mkdir -p "$out"
  OMP_NUM_THREADS=1 /usr/bin/time -f "%M" -o "$out.time" bazel-bin/weftrun --standalone \
    --nproc-per-node 1 bazel-bin/weft train --config bench/train_bench.yaml "${sets[@]}" \
    --set "output_dir=$out" "$@" >"$out.log" 2>&1 || {
    echo "$name failed:" >&2; tail -5 "$out.log" >&2; exit 1; }
  "$py" - "$name" "$out" "$((batch * seq))" "$work" "$seq" >>"$results" <<'PY'
import json, re, sys
import numpy as np
name, out, per_step, work, seq = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
rows = [json.loads(l) for l in open(out + "/metrics.jsonl")]
seconds = rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]
log = open(out + ".log").read()
fill = 1.0
if "padded" in name or "packed" in name:
    idx = open(work + "/docs.idx", "rb").read()
    n_tokens, n_docs = np.frombuffer(idx[24:40], "<u8")
    samples = int(re.search(r"data: .*?, (\d+) samples of", log).group(1))
    fill = n_tokens / (samples * seq)
trainable = re.search(r"lora: .*?: ([0-9.]+)M trainable", log)
tps = per_step * (rows[-1]["step"] - rows[0]["step"]) / seconds
print(json.dumps({"name": name, "tokens_per_s": tps, "useful_tokens_per_s": tps * fill,
    "fill": fill, "peak_rss_mb": int(open(out + ".time").read().split()[0]) / 1024,
    "train_peak_rss_mb": rows[-1]["peak_rss_mb"],
    "trainable_m": float(trainable.group(1)) if trainable else 124.668672,
    "last_loss": rows[-1]["loss"]}))
PY
  tail -1 "$results" >&2
}

peer() {  # name, then train_loop.py's extra flags
  local name="$1"; shift
  wait_quiet
  /usr/bin/time -f "%M" -o "$work/sft-$name.time" "$py" bench/train_loop.py \
    --config "$work/llama100m/config.json" --data "$work/tokens" --seq-len "$seq" --batch "$batch" \
    --steps "$steps" --threads 1 "$@" >"$work/sft-$name.json" 2>"$work/sft-$name.err" || {
    echo "$name failed:" >&2; tail -5 "$work/sft-$name.err" >&2; exit 1; }
  "$py" - "$name" "$work/sft-$name.json" "$work/sft-$name.time" >>"$results" <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))
print(json.dumps({"name": sys.argv[1], "tokens_per_s": r["tokens_per_s"],
    "useful_tokens_per_s": r["tokens_per_s"], "fill": 1.0,
    "peak_rss_mb": int(open(sys.argv[3]).read().split()[0]) / 1024,
    "train_peak_rss_mb": r["peak_rss_mb"], "trainable_m": r["trainable"] / 1e6,
    "last_loss": r["last_loss"]}))
PY
  tail -1 "$results" >&2
}

echo "uptime: $(uptime)" >&2
run_one full
run_one lora "${lora[@]}"
run_one lora-padded "${lora[@]}" --set "data.path=$work/docs_padded"
run_one lora-packed "${lora[@]}" --set "data.path=$work/docs" --set data.packing=true
peer pytorch-full
peer peft-lora --lora 16

"$py" - "$results" "$steps" <<'PY'
import json, sys
rows = {r["name"]: r for r in map(json.loads, open(sys.argv[1]))}
print(f"model 124.7M Llama fp32, 1 rank, global batch 4 x 256, steps 2..{sys.argv[2]}")
print(f"{'config':<12} {'trainable':>10} {'tokens/s':>8} {'fill':>5} {'useful/s':>8} {'train peak':>10} {'run peak':>9}")
for r in rows.values():
    print(f"{r['name']:<12} {r['trainable_m']:>9.2f}M {r['tokens_per_s']:>8.0f} {r['fill']:>5.2f} "
          f"{r['useful_tokens_per_s']:>8.0f} {r['train_peak_rss_mb']:>8.0f}MB {r['peak_rss_mb']:>7.0f}MB")
f, l = rows["full"], rows["lora"]
print(f"lora / full: tokens/s x{l['tokens_per_s'] / f['tokens_per_s']:.2f}, "
      f"train peak x{l['train_peak_rss_mb'] / f['train_peak_rss_mb']:.2f}")
p, d = rows["lora-packed"], rows["lora-padded"]
print(f"packed / padded: useful tokens/s x{p['useful_tokens_per_s'] / d['useful_tokens_per_s']:.2f}")
pf, pl = rows["pytorch-full"], rows["peft-lora"]
print(f"weft / PyTorch loop, full: tokens/s x{f['tokens_per_s'] / pf['tokens_per_s']:.2f}, "
      f"train peak x{f['train_peak_rss_mb'] / pf['train_peak_rss_mb']:.2f}")
print(f"weft LoRA / PEFT LoRA: tokens/s x{l['tokens_per_s'] / pl['tokens_per_s']:.2f}, "
      f"train peak x{l['train_peak_rss_mb'] / pl['train_peak_rss_mb']:.2f}")
PY
