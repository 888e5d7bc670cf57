#!/usr/bin/env bash
# Runs the README's "Fine-tune your own Hugging Face model" block as written,
# from the repository root, after tools/test.sh's bazel build (so its setup
# and build steps are no-ops): it must exit 0, train, export hf/ and let
# transformers load and generate from it. The block's own runs/ directories
# are removed first so that it starts fresh, as a user's first run does.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
block="$(sed -n '/<!-- quickstart:begin/,/<!-- quickstart:end -->/p' README.md | sed '1,2d;$d' | sed '$d')"
[[ -n "$block" ]] || { echo "FAIL: no quickstart block in README.md"; exit 1; }
rm -rf runs/quickstart runs/quickstart_model
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! bash -euo pipefail -c "$block" >"$log" 2>&1; then
  echo "FAIL: the README quick start exited non-zero:"; tail -30 "$log"; exit 1
fi
grep -q "\[rank0\]:\[train\] exported a Hugging Face checkpoint to runs/quickstart/hf" "$log" ||
  { echo "FAIL: no export in the quick start's output:"; tail -30 "$log"; exit 1; }
[[ -f runs/quickstart/hf/tokenizer.json ]] || { echo "FAIL: hf/ has no tokenizer.json"; exit 1; }
grep -q "^Full fathom five" "$log" ||
  { echo "FAIL: transformers did not generate from the export:"; tail -5 "$log"; exit 1; }
echo "PASS: README quick start ($(grep -c '\[rank0\]:\[train\] step' "$log") progress lines)"
