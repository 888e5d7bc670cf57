#!/usr/bin/env bash
# Builds weft here (against the pinned torch 2.11 CUDA 13 wheel) and packs
# what bench/gpu/run.sh needs on the GPU machine into bench/gpu/bundle/
# (git-ignored; carried to the device whole, < 64 MiB):
#   weft, weftrun, libweft_cuda.so, bench/load_bench and the parallel and
#   model test binaries (stripped);
#   lib/: the Debian shared libraries they load that an Ubuntu image may lack
#   (absl, yaml-cpp, Open MPI, hwloc, libevent, ...), found with ldd; glibc,
#   libstdc++ and libgcc_s stay the machine's, and LibTorch/CUDA/NCCL come from
#   the machine's own torch 2.11 (its lib/ and nvidia/*/lib on LD_LIBRARY_PATH);
#   the test fixtures and plans the binaries read (tests/data, plans),
#   bench/gpu/*.py and the Python peers.
# Then proves the bundle stands alone: a copy in an empty directory runs a
# test binary and `weft forward`, with LD_LIBRARY_PATH holding only its lib/
# and a copy of torch's lib/ (+ nvidia/*/lib), and the dynamic loader's log
# shows every library besides glibc/libstdc++/libgcc_s coming from those two.
#
#   bash bench/gpu/bundle.sh          # then: device run with carry [bench/gpu/bundle]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
bash tools/setup.sh >/dev/null
tests=(//parallel:collectives_test //parallel:cuda_plugin_test //parallel:runtime_errors_test
  //models:parity_test //models:generated_parity_test)
# Test binaries fully linked (no bazel-built shared libraries beside them).
bazel build --dynamic_mode=off //:weft //:weftrun //parallel:libweft_cuda.so //bench:load_bench \
  "${tests[@]}" >/dev/null
out=bench/gpu/bundle
rm -rf "$out"
mkdir -p "$out/lib" "$out/tests/bin" "$out/bench"
copy_bin() {  # source, destination
  cp -L "$1" "$2"
  chmod u+w "$2"
  strip --strip-unneeded "$2"
}
copy_bin bazel-bin/weft "$out/weft"
copy_bin bazel-bin/weftrun "$out/weftrun"
copy_bin bazel-bin/parallel/libweft_cuda.so "$out/libweft_cuda.so"
copy_bin bazel-bin/bench/load_bench "$out/load_bench"
for t in "${tests[@]}"; do
  path="${t#//}"
  copy_bin "bazel-bin/${path/://}" "$out/tests/bin/${t##*:}"
done
mkdir -p "$out/tests/data"
cp -r tests/data/hf tests/data/gen tests/data/plans "$out/tests/data/"
mkdir -p "$out/plans"
cp plans/*.yaml "$out/plans/"  # the shipped plans only: no BUILD files or sources
cp bench/gpu/*.py bench/make_checkpoint.py bench/train_loop.py "$out/bench/"
cp bench/gpu/run.sh "$out/run.sh"
# The Debian libraries: everything ldd resolves outside the venv, minus the
# C/C++ runtime the GPU machine has (and its torch needs) anyway.
site="$(cat .deps/site-packages.path)"
keep_machine='^(libc|libm|libdl|librt|libpthread|libutil|libresolv|ld-linux-x86-64|libstdc\+\+|libgcc_s)\.'
for f in "$out"/weft "$out"/weftrun "$out"/libweft_cuda.so "$out"/load_bench "$out"/tests/bin/*; do
  ldd "$f" | awk '$3 ~ /^\// {print $1, $3}'
done | sort -u | while read -r name path; do
  [[ "$path" == "$site"* || "$path" == "$(readlink -f "$site")"* ]] && continue
  [[ "$name" =~ $keep_machine ]] && continue
  cp -L "$path" "$out/lib/$name"
done
chmod -R u+w "$out"
size=$(du -sm "$out" | cut -f1)
echo "bundle: $out, ${size} MiB, $(ls "$out/lib" | wc -l) libraries" >&2
((size < 64)) || { echo "FAIL: the bundle is ${size} MiB (expected < 64)" >&2; exit 1; }

# The proof: an empty directory, the bundle and a copy of torch's libraries.
check="$(mktemp -d)"
trap 'rm -rf "$check"' EXIT
cp -r "$out" "$check/bundle"
mkdir -p "$check/torch"
cp -r "$site/torch/lib" "$check/torch/lib"
nvidia_libs=""
for d in "$site"/nvidia/*/lib; do
  mkdir -p "$check/nvidia/$(basename "$(dirname "$d")")"
  cp -r "$d" "$check/nvidia/$(basename "$(dirname "$d")")/lib"
  nvidia_libs+=":$check/nvidia/$(basename "$(dirname "$d")")/lib"
done
ld_path="$check/bundle/lib:$check/torch/lib$nvidia_libs"
cd "$check/bundle"
run() { env -i PATH=/usr/bin:/bin HOME="$check" LD_LIBRARY_PATH="$ld_path" LD_DEBUG=libs \
  LD_DEBUG_OUTPUT="$check/ld" "$@"; }
run ./tests/bin/parity_test --gtest_filter='Parity.*' >"$check/parity.log" 2>&1 ||
  { cat "$check/parity.log"; exit 1; }
run ./weft forward --model tests/data/hf/llama --prompt-ids 1,2,3 --output "$check/logits.safetensors" ||
  exit 1
run ./weft smoke --device cpu >"$check/smoke.log" 2>&1 || { cat "$check/smoke.log"; exit 1; }
# Where each library came from (the loader's own log, every process).
bad="$(cat "$check"/ld.* | sed -n 's/.*calling init: \(.*\)$/\1/p' | sort -u |
  grep -v -E "^($check/bundle/lib|$check/torch/lib|$check/nvidia)/" |
  grep -v -E "/(libc|libm|libdl|librt|libpthread|libutil|libresolv|ld-linux-x86-64|libstdc\+\+|libgcc_s)\.so" || true)"
if [[ -n "$bad" ]]; then
  echo "FAIL: libraries loaded from outside the bundle and torch's lib/:" >&2
  echo "$bad" >&2
  exit 1
fi
loaded="$(cat "$check"/ld.* | sed -n 's/.*calling init: \(.*\)$/\1/p' | sort -u | wc -l)"
echo "bundle proven: a test binary, weft forward and weft smoke ran from $check with only" \
  "bundle/lib and torch's lib/ on LD_LIBRARY_PATH ($loaded libraries loaded; none from elsewhere" \
  "but glibc, libstdc++ and libgcc_s)" >&2
