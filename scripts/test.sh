#!/usr/bin/env bash
# The project's test command: fetch the test assets, then run every test.
# GPU tests skip with a message where no CUDA driver/GPU is present.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs) first" >&2; exit 1; }
./scripts/fetch-assets.sh
# The chat/TUI tests drive the binary inside tmux (a real terminal); they skip
# without it, so install it where apt-get can.
if ! command -v tmux >/dev/null; then
    if command -v apt-get >/dev/null; then
        SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
        $SUDO apt-get update -qq && $SUDO apt-get install -y -qq tmux >/dev/null \
            || echo "warning: could not install tmux; the terminal tests will skip" >&2
    else
        echo "warning: tmux not found and no apt-get; the terminal tests will skip" >&2
    fi
fi

# NVRTC from PyPI (no GPU needed), so that the kernel-compile test builds every
# CUDA kernel for sm_90 and sm_75 here too. Installed once into .nvrtc/ (git-
# ignored); any failure only skips that test, with its message. Pinned to
# 13.0, the GPU machine's CUDA: a later NVRTC accepts code that 13.0 rejects
# (13.5 compiles a lambda with an `auto` parameter in JIT mode; 13.0, on the
# GPU machine, refused it when the backend opened).
nvrtc_version=13.0
if [ -z "${METALLIC_CUDA_LIB_DIR:-}" ]; then
  lib=$(ls -d .nvrtc/nvidia/cu*/lib 2>/dev/null | head -1 || true)
  if [ -n "$lib" ] && ! ls "$lib"/libnvrtc-builtins.so.$nvrtc_version >/dev/null 2>&1; then
    echo "replacing .nvrtc/ (not NVRTC $nvrtc_version)"
    rm -rf .nvrtc
    lib=
  fi
  if [ -z "$lib" ]; then
    echo "installing NVRTC $nvrtc_version (nvidia-cuda-nvrtc) into .nvrtc/ for the kernel-compile test"
    timeout 600 python3 -m pip install --quiet --disable-pip-version-check --no-deps \
      --target .nvrtc "nvidia-cuda-nvrtc==$nvrtc_version.*" >/dev/null 2>&1 \
      || echo "warning: NVRTC could not be installed; the kernel-compile test will skip" >&2
    lib=$(ls -d .nvrtc/nvidia/cu*/lib 2>/dev/null | head -1 || true)
  fi
  if [ -n "$lib" ] && ls "$lib"/libnvrtc.so* >/dev/null 2>&1; then
    export METALLIC_CUDA_LIB_DIR="$PWD/$lib"
  fi
fi

# The openai client for the server tests; they must not skip here.
./scripts/setup-test-venv.sh
export METALLIC_REQUIRE_OPENAI_TESTS=1
cargo test --workspace --all-targets "$@"
# The NEON kernels, cross-compiled and run under qemu-user (a subset: the CPU crate).
./scripts/test-aarch64.sh
