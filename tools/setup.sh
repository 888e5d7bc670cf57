#!/usr/bin/env bash
# Installs everything weft needs, idempotently: Debian packages, a Python venv
# holding the pinned torch wheel (LibTorch) plus the reference-check packages,
# and the .deps/venv link Bazel's repository rules read. A warm re-run only
# checks and returns in seconds.
#
#   bash tools/setup.sh            # WEFT_VENV overrides the venv location
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=tools/versions.env
source "$root/tools/versions.env"
venv="${WEFT_VENV:-$HOME/.cache/weft/venv-torch-$TORCH_VERSION}"
log() { echo "[setup] $*" >&2; }

# 1. Debian packages.
missing=()
for pkg in $APT_PACKAGES; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. The venv with the pinned wheels. A stamp records what was installed, so a
#    warm run skips pip entirely.
want="torch==$TORCH_VERSION transformers==$TRANSFORMERS_VERSION safetensors==$SAFETENSORS_VERSION numpy==$NUMPY_VERSION peft==$PEFT_VERSION"
stamp="$venv/.weft-installed"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  log "creating venv $venv with: $want"
  if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install -q --disable-pip-version-check $want
  echo "$want" >"$stamp"
fi

# 3. Bazel's view of the venv: third_party/wheels.bzl reads this path, and
#    refetches @libtorch and @cuda_wheels when it changes.
mkdir -p "$root/.deps"
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
site="$(readlink -f "$site")"
if [[ "$(cat "$root/.deps/site-packages.path" 2>/dev/null || true)" != "$site" ]]; then
  echo "$site" >"$root/.deps/site-packages.path"
fi
ln -sfn "$venv" "$root/.venv"
mkdir -p "$HOME/.cache/weft/bazel-disk-cache"
log "ready: torch $TORCH_VERSION at $venv"
