#!/usr/bin/env bash
# The GPU checks, in one call on the GPU machine (at most 8 minutes), from the
# bundle bench/gpu/bundle.sh made (carried whole). Results go under $OUT:
#   env.txt        the machine, the libraries the bundle resolves (ldd)
#   a_tests.txt    (a) the test binaries (CPU/Gloo), the CUDA plugin test,
#                  `weft smoke --device cuda` with 1 and 2 processes on the one
#                  GPU (NCCL may refuse two ranks on one GPU: its error is kept)
#   b_parity.jsonl (b) `weft forward --device cuda` on every fixture vs its CPU
#                  reference (transformers' logits), fp32, max |diff|
#   c_load.jsonl   (c) a ~8 GB bf16 Llama made there, page cache warm: weft's
#                  loader onto the GPU with the caching-allocator warmup and
#                  without, and transformers' from_pretrained(device_map="cuda")
#   d_train.jsonl  (d) a 1.1B Llama (TinyLlama's shape), seq 2048, bf16:
#                  weft train's tokens/s and MFU vs a plain PyTorch/transformers
#                  loop (bench/train_loop.py --bf16) on the same model and batch.
#                  MFU = 6 * N * tokens/s / 989e12 (N: every parameter, the
#                  embeddings included; 989 TFLOP/s: H100/H200 dense bf16).
#   summary.txt    one line per check
# Each step has its own time limit; a failing step is recorded and the next
# runs.
#
#   (on the device) bash bench/gpu/run.sh      # $OUT set by the device tool
#   WEFT_GPU_DRY=1 bash bench/gpu/run.sh       # here: tiny sizes, the plumbing only
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bundle="$root/bench/gpu/bundle"
OUT="${OUT:-/tmp/weft-gpu-out}"
mkdir -p "$OUT"
summary="$OUT/summary.txt"
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }
start=$SECONDS
[[ -x "$bundle/weft" ]] || { note "no bundle at $bundle (run bench/gpu/bundle.sh and carry it)"; exit 1; }
python="$(command -v python3)"
torch_lib="$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
site="$(dirname "$(dirname "$torch_lib")")"
ld="$bundle/lib:$torch_lib"
for d in "$site"/nvidia/*/lib "$site"/nvidia/cu13/lib; do [[ -d "$d" ]] && ld+=":$d"; done
export LD_LIBRARY_PATH="$ld${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export WEFT_CUDA_PLUGIN="$bundle/libweft_cuda.so"
cd "$bundle"
{
  nvidia-smi || true
  "$python" -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())'
  ldd --version | head -1
  for f in weft weftrun libweft_cuda.so load_bench tests/bin/*; do echo "== $f"; ldd "$f" | grep -E "not found" || echo "all resolved"; done
} >"$OUT/env.txt" 2>&1
note "env: $(grep -c 'all resolved' "$OUT/env.txt") binaries with every library resolved, $(grep -c 'not found' "$OUT/env.txt") missing"

# (a) Test binaries, the plugin, NCCL through weft smoke.
{
  for t in tests/bin/*; do
    echo "== $t"
    timeout 120 "$t" 2>&1 | tail -3
    echo "rc=${PIPESTATUS[0]}"
  done
  echo "== weft smoke --device cuda, 1 process"
  timeout 60 ./weftrun --standalone --nproc-per-node 1 ./weft smoke --device cuda 2>&1 | tail -5
  echo "rc=${PIPESTATUS[0]}"
  echo "== weft smoke --device cuda, 2 processes on the one GPU"
  timeout 60 ./weftrun --standalone --nproc-per-node 2 ./weft smoke --device cuda 2>&1 | tail -8
  echo "rc=${PIPESTATUS[0]}"
} >"$OUT/a_tests.txt" 2>&1
note "(a) $(grep -c '^rc=0' "$OUT/a_tests.txt") of $(grep -c '^rc=' "$OUT/a_tests.txt") runs passed ($((SECONDS - start)) s)"

# (b) Forward parity on the GPU for every fixture with a reference.
: >"$OUT/b_parity.jsonl"
for dir in tests/data/hf/* tests/data/gen/*; do
  [[ -f "$dir/reference.safetensors" && -f "$dir/config.json" ]] || continue
  dtype=float32
  grep -q '"bfloat16"' "$dir/config.json" && dtype=bfloat16
  tol=1e-3
  [[ $dtype == bfloat16 ]] && tol=0.1
  if timeout 60 ./weft forward --device cuda --dtype "$dtype" --attn eager --model "$dir" \
    --input "$dir/reference.safetensors" --output "$OUT/logits.safetensors" >>"$OUT/b_errors.txt" 2>&1; then
    "$python" bench/compare.py "$dir" "$OUT/logits.safetensors" "$tol" >>"$OUT/b_parity.jsonl"
  else
    echo "{\"fixture\": \"$dir\", \"ok\": false, \"error\": \"weft forward failed (b_errors.txt)\"}" >>"$OUT/b_parity.jsonl"
  fi
done
rm -f "$OUT/logits.safetensors"
note "(b) $(grep -c '"ok": true' "$OUT/b_parity.jsonl") of $(wc -l <"$OUT/b_parity.jsonl") fixtures match on the GPU ($((SECONDS - start)) s)"

# (c) Loading ~8 GB of bf16 onto the GPU.
ckpt=/tmp/weft-gpu-llama8g
size=(--hidden 4096 --intermediate 11008 --layers 22)
[[ -n "${WEFT_GPU_DRY:-}" ]] && size=(--hidden 256 --intermediate 512 --layers 2)
rm -rf "$ckpt"
timeout 240 "$python" bench/make_checkpoint.py "$ckpt" "${size[@]}" --max-shard-mb 2000 >"$OUT/c_make.txt" 2>&1
cat "$ckpt"/*.safetensors >/dev/null 2>&1  # page cache warm for every contender
: >"$OUT/c_load.jsonl"
for warm in 1 0; do
  timeout 120 ./load_bench --model "$ckpt" --device cuda --warmup "$warm" 2>>"$OUT/c_errors.txt" |
    sed "s/^{/{\"who\": \"weft\", \"warmup\": $warm, /" >>"$OUT/c_load.jsonl"
done
timeout 180 "$python" - "$ckpt" >>"$OUT/c_load.jsonl" 2>>"$OUT/c_errors.txt" <<'PY'
import json, sys, time
t0 = time.perf_counter()
import torch, transformers
t1 = time.perf_counter()
m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16, device_map="cuda")
torch.cuda.synchronize()
t2 = time.perf_counter()
print(json.dumps({"who": "transformers", "seconds": t2 - t1, "import_s": t1 - t0,
                  "bytes_loaded": sum(p.numel() * p.element_size() for p in m.parameters())}))
PY
note "(c) $(wc -l <"$OUT/c_load.jsonl") loading runs recorded ($((SECONDS - start)) s)"
rm -rf "$ckpt"

# (d) Training a 1.1B Llama at seq 2048 in bf16: weft vs a PyTorch loop.
work=/tmp/weft-gpu-train
mkdir -p "$work"
cat >"$work/config.json" <<'JSON'
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32000,
 "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
 "num_attention_heads": 32, "num_key_value_heads": 4, "max_position_embeddings": 2048,
 "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "torch_dtype": "float32"}
JSON
"$python" - "$work/tokens" <<'PY'
import struct, sys
import numpy as np
n, vocab = 1 << 20, 32000
np.random.default_rng(0).integers(0, vocab, size=n, dtype=np.uint16).tofile(sys.argv[1] + ".bin")
with open(sys.argv[1] + ".idx", "wb") as f:
    f.write(b"WEFTTOK1" + struct.pack("<IIQQQ", 1, 2, vocab, n, 1) + struct.pack("<QQ", 0, n))
PY
batch=8 steps=12
if [[ -n "${WEFT_GPU_DRY:-}" ]]; then
  sed -i 's/"hidden_size": 2048/"hidden_size": 128/; s/"num_hidden_layers": 22/"num_hidden_layers": 2/' "$work/config.json"
  batch=2 steps=3
fi
cat >"$work/run.yaml" <<YAML
model: {config: $work/config.json, attn_implementation: sdpa}
data: {path: $work/tokens, seq_len: 2048, shuffle: false}
optimizer: {lr: 3.0e-4, grad_clip: 1.0}
schedule: {decay: constant}
train: {steps: $steps, global_batch: $batch, micro_batch: $batch, precision: bf16, device: cuda}
checkpoint: {export: false}
logging: {every: 1}
output_dir: $work/weft
YAML
timeout 240 ./weft train --config "$work/run.yaml" >"$OUT/d_weft.log" 2>&1
echo "rc=$?" >>"$OUT/d_weft.log"
timeout 180 "$python" bench/train_loop.py --config "$work/config.json" --data "$work/tokens" \
  --seq-len 2048 --batch $batch --steps $steps --device cuda --bf16 >"$OUT/d_pytorch.json" 2>"$OUT/d_pytorch.err"
"$python" - "$work/weft/metrics.jsonl" "$OUT/d_pytorch.json" $batch "$work/config.json" >"$OUT/d_train.jsonl" 2>>"$OUT/d_pytorch.err" <<'PY'
import json, sys
c = json.load(open(sys.argv[4]))
h, i, l, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
kv = h // c["num_attention_heads"] * c["num_key_value_heads"]
n = 2 * v * h + l * (2 * h * h + 2 * h * kv + 3 * h * i + 2 * h) + h  # every parameter
peak = 989e12
batch = int(sys.argv[3])
try:
    rows = [json.loads(l) for l in open(sys.argv[1])]
    tps = batch * 2048 * (rows[-1]["step"] - rows[1]["step"]) / (rows[-1]["elapsed_s"] - rows[1]["elapsed_s"])
    print(json.dumps({"who": "weft", "tokens_per_s": tps, "mfu": 6 * n * tps / peak, "last_loss": rows[-1]["loss"]}))
except Exception as e:
    print(json.dumps({"who": "weft", "error": str(e)}))
try:
    r = json.load(open(sys.argv[2]))
    print(json.dumps({"who": "pytorch", "tokens_per_s": r["tokens_per_s"],
                      "mfu": 6 * r["params"] * r["tokens_per_s"] / peak, "last_loss": r["last_loss"],
                      "peak_gpu_mb": r.get("peak_gpu_mb")}))
except Exception as e:
    print(json.dumps({"who": "pytorch", "error": str(e)}))
PY
note "(d) $(cat "$OUT/d_train.jsonl" | tr '\n' ' ') ($((SECONDS - start)) s)"
rm -rf "$work"
note "done in $((SECONDS - start)) s"
