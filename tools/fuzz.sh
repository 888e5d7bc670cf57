#!/usr/bin/env bash
# Fuzzes the safetensors header parser and the JSON parser with libFuzzer
# (clang, ASan + UBSan, leak checking) for SECONDS (default 60), starting from
# checkpoint/fuzz_corpus. Exits non-zero on any crash, leak, timeout or
# sanitizer report, printing the report and the input (hex) and keeping both
# in a directory under ${TMPDIR:-/tmp}. Nothing is written to the repository.
# Last line: `fuzz: OK, N runs in S s` or `fuzz: FAILED (...)`.
#
#   bash tools/fuzz.sh [SECONDS]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${1:-60}"
fail() { echo "fuzz: FAILED ($*)"; exit 1; }
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || fail "SECONDS must be a positive integer, got '$seconds'"
work="$(mktemp -d "${TMPDIR:-/tmp}/weft-fuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT
bash "$root/tools/setup.sh" >"$work/setup.log" 2>&1 || { tail -20 "$work/setup.log" >&2; fail "setup"; }
torch="$(cat "$root/.deps/site-packages.path")/torch"
absl_libs=(-labsl_statusor -labsl_status -labsl_cord -labsl_cordz_info -labsl_cord_internal
  -labsl_cordz_functions -labsl_cordz_handle -labsl_str_format_internal -labsl_strings
  -labsl_strings_internal -labsl_synchronization -labsl_time -labsl_time_zone -labsl_int128
  -labsl_throw_delegate -labsl_raw_logging_internal -labsl_base -labsl_spinlock_wait)
if ! clang++ -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I"$root" -I"$torch/include" \
  "$root/checkpoint/safetensors_fuzz.cc" "$root/checkpoint/safetensors_header.cc" \
  "$root/base/json.cc" "$root/base/dtype.cc" "$root/base/status.cc" \
  -L"$torch/lib" -Wl,-rpath,"$torch/lib" -lc10 "${absl_libs[@]}" -o "$work/fuzz" 2>"$work/build.log"; then
  tail -20 "$work/build.log" >&2
  fail "build"
fi
cp -r "$root/checkpoint/fuzz_corpus" "$work/corpus" || fail "no seed corpus"
start=$SECONDS
rc=0
ASAN_OPTIONS=detect_leaks=1 "$work/fuzz" "$work/corpus" -max_total_time="$seconds" -timeout=5 \
  -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$work/" >"$work/run.log" 2>&1 || rc=$?
report='ERROR: |runtime error:|^SUMMARY:'
if ((rc == 0)) && ! grep -qE "$report" "$work/run.log"; then
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work/run.log" | grep -o '[0-9]*$' || echo "?")
  echo "fuzz: OK, $runs runs in $((SECONDS - start)) s"
  exit 0
fi
# Failed: keep the work directory (log and input), show the report and the input.
trap - EXIT
first=$(grep -nE "$report" "$work/run.log" | head -1 | cut -d: -f1 || true)
sed -n "${first:-1},\$p" "$work/run.log" | grep -vE '^(#[0-9]+\s+(pulse|NEW|REDUCE|INITED)|stat::)' | head -80 >&2 || true
kind="exit status $rc"
for artifact in "$work"/crash-* "$work"/leak-* "$work"/timeout-* "$work"/oom-*; do
  [[ -f "$artifact" ]] || continue
  kind="$(basename "$artifact" | cut -d- -f1)"
  echo "input ($(stat -c %s "$artifact") bytes, $artifact):" >&2
  od -An -tx1 -v "$artifact" | tr -d ' \n' | fold -w 64 | head -64 >&2 || true
  echo >&2
  break
done
if grep -q 'runtime error:' "$work/run.log"; then kind="undefined behavior"; fi
fail "$kind; log and input kept in $work"
