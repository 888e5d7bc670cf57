#!/usr/bin/env bash
# Fuzzes the safetensors header parser and the JSON parser with libFuzzer
# (clang, ASan + UBSan, leak checking) for SECONDS (default 60), starting from
# checkpoint/fuzz_corpus. Exits non-zero on any crash, leak, timeout or
# sanitizer report. Last line: `fuzz: OK, N runs in S s` or `fuzz: FAILED (...)`.
#
#   bash tools/fuzz.sh [SECONDS]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${1:-60}"
bash "$root/tools/setup.sh" >/dev/null
torch="$(cat "$root/.deps/site-packages.path")/torch"
work="$(mktemp -d "${TMPDIR:-/tmp}/weft-fuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT
absl_libs=(-labsl_statusor -labsl_status -labsl_cord -labsl_cordz_info -labsl_cord_internal
  -labsl_cordz_functions -labsl_cordz_handle -labsl_str_format_internal -labsl_strings
  -labsl_strings_internal -labsl_synchronization -labsl_time -labsl_time_zone -labsl_int128
  -labsl_throw_delegate -labsl_raw_logging_internal -labsl_base -labsl_spinlock_wait)
if ! clang++ -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I"$root" -I"$torch/include" \
  "$root/checkpoint/safetensors_fuzz.cc" "$root/checkpoint/safetensors_header.cc" \
  "$root/checkpoint/json.cc" "$root/checkpoint/dtype.cc" "$root/parallel/status.cc" \
  -L"$torch/lib" -Wl,-rpath,"$torch/lib" -lc10 "${absl_libs[@]}" -o "$work/fuzz" 2>"$work/build.log"; then
  tail -20 "$work/build.log" >&2
  echo "fuzz: FAILED (build)"
  exit 1
fi
cp -r "$root/checkpoint/fuzz_corpus" "$work/corpus"
start=$SECONDS
if ASAN_OPTIONS=detect_leaks=1 "$work/fuzz" "$work/corpus" -max_total_time="$seconds" -timeout=5 \
  -rss_limit_mb=2048 -print_final_stats=1 >"$work/run.log" 2>&1; then
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work/run.log" | grep -o '[0-9]*$' || echo "?")
  echo "fuzz: OK, $runs runs in $((SECONDS - start)) s"
else
  grep -E "ERROR|SUMMARY|crash-|leak-|timeout-" "$work/run.log" | head -20 >&2
  echo "fuzz: FAILED (see the report above)"
  exit 1
fi
