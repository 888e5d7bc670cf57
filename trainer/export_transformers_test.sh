#!/usr/bin/env bash
# A TP=2 training run's Hugging Face export loads in transformers (the
# project's venv) and gives the logits `weft forward` gives on it.
set -euo pipefail
weft="$PWD/weft"
weftrun="$PWD/weftrun"
check="$PWD/trainer/export_check.py"
source tests/testlib.sh
python="$(venv_python)" || exit 1
work="${TEST_TMPDIR:-$(mktemp -d)}/export"
rm -rf "$work"
mkdir -p "$work"
write_tiny_run "$work" "parallel: {tp: 2}"
"$weftrun" --standalone --nproc-per-node 2 "$weft" train --config "$work/run.yaml" >"$work/train.log" 2>&1 ||
  { cat "$work/train.log"; exit 1; }
export_dir="$work/run/hf"
for f in config.json model.safetensors; do
  [[ -f "$export_dir/$f" ]] || { echo "missing $export_dir/$f"; ls -la "$export_dir"; exit 1; }
done
"$python" "$check" write-ids "$work/ids.safetensors"
"$weft" forward --model "$export_dir" --input "$work/ids.safetensors" --output "$work/weft.safetensors"
"$python" "$check" compare "$export_dir" "$work/ids.safetensors" "$work/weft.safetensors"
# The export is the trained model: the final checkpoint's shards, reassembled.
"$python" "$check" shards "$export_dir" "$work/run/checkpoints/step_00000006"
# The same job under plain mpirun (the runtime reads Open MPI's environment).
if command -v mpirun >/dev/null; then
  root_flag=()
  [[ $(id -u) -eq 0 ]] && root_flag=(--allow-run-as-root)
  mpirun "${root_flag[@]}" --oversubscribe -np 2 "$weft" train --config "$work/run.yaml" \
    --set "output_dir=$work/mpirun" --set train.steps=2 --set logging.every=1 >"$work/mpirun.log" 2>&1 ||
    { cat "$work/mpirun.log"; exit 1; }
  grep -q "mesh dp 1 x tp 2" "$work/mpirun.log" || { cat "$work/mpirun.log"; exit 1; }
  [[ $(wc -l <"$work/mpirun/metrics.jsonl") -eq 2 && -f "$work/mpirun/hf/model.safetensors" ]] ||
    { echo "mpirun run: missing metrics or export"; exit 1; }
fi
# weft train's command line: a bad key is one line on stderr and exit code 2.
set +e
"$weft" train --config "$work/run.yaml" --set optimizer.lrr=1 2>"$work/err.txt"
rc=$?
set -e
want="weft train: --set: unknown key 'optimizer.lrr' (known keys under optimizer: lr, betas, eps, weight_decay, grad_clip)"
[[ $rc -eq 2 && "$(cat "$work/err.txt")" == "$want" ]] ||
  { echo "weft train with a bad key: exit $rc, stderr: $(cat "$work/err.txt")"; exit 1; }
echo "PASS"
