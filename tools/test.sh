#!/usr/bin/env bash
# Runs weft's whole test suite on this machine, after its own idempotent
# setup: every Bazel test, then a one-minute fuzzing run of the safetensors
# header parser (tools/fuzz.sh) and the README's quick start as written
# (tools/quickstart_test.sh). Ends with the line `N passed, N failed` (test
# cases).
#
#   bash tools/test.sh [extra bazel test flags or targets]
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash tools/setup.sh || { echo "0 passed, 1 failed"; exit 1; }

targets=("$@")
((${#targets[@]})) || targets=(//...)
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# --nocache_test_results: the disk cache would otherwise replay earlier results.
bazel test --keep_going --nocache_test_results "${targets[@]}" 2>&1 | tee "$log"
bazel_rc=${PIPESTATUS[0]}
# The whole suite also fuzzes the safetensors header parser for a minute
# (WEFT_FUZZ_SECONDS; 0 skips it). It counts as one more test case.
extra=()
if (($# == 0)) && ((${WEFT_FUZZ_SECONDS:-60} > 0)); then
  if bash tools/fuzz.sh "${WEFT_FUZZ_SECONDS:-60}"; then
    extra=(--extra "fuzz:safetensors_header=passed")
  else
    extra=(--extra "fuzz:safetensors_header=failed")
  fi
fi
# The README's quick start, run as written (its build is the one above).
if (($# == 0)); then
  if bash tools/quickstart_test.sh; then
    extra+=(--extra "readme:quickstart=passed")
  else
    extra+=(--extra "readme:quickstart=failed")
  fi
fi
python3 tools/test_summary.py "$log" "$(bazel info bazel-testlogs 2>/dev/null)" "${extra[@]}"
summary_rc=$?
((bazel_rc == 0 && summary_rc == 0)) || exit 1
