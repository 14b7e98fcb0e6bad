#!/usr/bin/env bash
# Installs libtorch for ponder into .libtorch/ (git-ignored), from PyPI's torch==2.13.0
# wheel: the version tch 0.26 expects. Idempotent: a second run does nothing.
#
# The Linux wheel is built against CUDA 13. On CPU-only machines we install just the two
# CUDA runtime libraries libtorch_cpu links to (cudart, cupti: ~13 MB) instead of the
# multi-GB CUDA stack. Where `nvidia-smi` finds a GPU (or PONDER_CUDA=1) the wheel's full
# dependency set is installed, and the same build then runs on CUDA.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.libtorch/site"
stamp="$root/.libtorch/installed"
want="torch==2.13.0"
cuda=0
if [ "${PONDER_CUDA:-}" = 1 ] || { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }; then
  cuda=1
fi
want_stamp="$want cuda=$cuda"

# Gloo's headers, which the wheel lacks and ponder-dist's C++ shim over c10d needs (libtorch
# ships c10d's own headers and Gloo's compiled code): Debian's libgloo-dev, pinned and
# checked, unpacked into .libtorch/gloo/ without installing anything system-wide. The
# multi-process tests in dist/tests check every collective against its definition, which is
# what vouches for these headers against the Gloo compiled into torch 2.13.
gloo_deb="libgloo-dev=0.0~git20220518.5b14351-3"
gloo_sha256="80529c9fd8af452faf489e686b94bf87075965c40673803810c4f41634b1e299"
fetch_gloo() {
  local dir="$root/.libtorch/gloo"
  [ -f "$dir/include/gloo/context.h" ] && return 0
  if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
    echo "ponder setup: no apt-get / dpkg-deb here, so Gloo's headers were not fetched: ponder-dist builds without Gloo (data-parallel training unavailable; its tests fail)" >&2
    return 0
  fi
  local tmp
  tmp="$(mktemp -d)"
  if (cd "$tmp" && apt-get download "$gloo_deb" >/dev/null 2>&1) \
     && echo "$gloo_sha256  $(ls "$tmp"/libgloo-dev_*.deb)" | sha256sum --check --status \
     && dpkg-deb -x "$tmp"/libgloo-dev_*.deb "$tmp/x"; then
    rm -rf "$dir.partial" && mkdir -p "$dir.partial" && cp -r "$tmp/x/usr/include" "$dir.partial/include"
    rm -rf "$dir" && mv "$dir.partial" "$dir"
    echo "ponder setup: Gloo headers ($gloo_deb) ready at $dir/include" >&2
  else
    echo "ponder setup: could not fetch $gloo_deb with apt-get (or its checksum differs): ponder-dist builds without Gloo" >&2
  fi
  rm -rf "$tmp"
}
fetch_gloo
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_stamp" ] && [ -f "$dest/torch/lib/libtorch_cpu.so" ]; then
  exit 0
fi
py="${PYTHON:-$(command -v python3 || command -v python || true)}"
if [ -z "$py" ]; then
  echo "ponder setup: python3 with pip is needed to fetch libtorch from PyPI (apt-get install python3-pip)" >&2
  exit 1
fi
echo "ponder setup: installing libtorch ($want, cuda=$cuda) into $dest (once; ~530 MB download)" >&2
rm -rf "$dest.partial"
mkdir -p "$dest.partial"
pipargs=(-m pip install --quiet --disable-pip-version-check --no-compile --target "$dest.partial")
if [ "$cuda" = 1 ]; then
  "$py" "${pipargs[@]}" "$want"
else
  "$py" "${pipargs[@]}" --no-deps "$want" \
    "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cupti==13.0.85"
fi
# Swap in atomically so an interrupted install never leaves a half-populated folder.
rm -rf "$dest"
mv "$dest.partial" "$dest"
echo "$want_stamp" > "$stamp"
echo "ponder setup: libtorch ready at $dest/torch" >&2
