#!/usr/bin/env bash
# The project's test command: fetch the test assets, then run every test.
# GPU tests skip with a message where no CUDA driver/GPU is present.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs) first" >&2; exit 1; }
./scripts/fetch-assets.sh
# NVRTC from PyPI (nvidia-cuda-nvrtc, into .nvrtc/), so that every CUDA kernel
# is compile-checked for sm_90 and sm_75 even without a GPU
# (metallic-cuda's every_kernel_compiles_for_hopper_and_turing). Skipped where
# METALLIC_CUDA_LIB_DIR is already set; without it that test skips with a note.
if [ -z "${METALLIC_CUDA_LIB_DIR:-}" ]; then
  nvrtc=$(find .nvrtc -name 'libnvrtc.so*' -printf '%h\n' 2>/dev/null | head -1)
  if [ -z "$nvrtc" ]; then
    python3 -m pip install --quiet --disable-pip-version-check --target .nvrtc nvidia-cuda-nvrtc ||
      echo "warning: could not install nvidia-cuda-nvrtc: CUDA kernels are not compile-checked" >&2
    nvrtc=$(find .nvrtc -name 'libnvrtc.so*' -printf '%h\n' 2>/dev/null | head -1)
  fi
  if [ -n "$nvrtc" ]; then export METALLIC_CUDA_LIB_DIR="$PWD/$nvrtc"; fi
fi
cargo test --workspace --all-targets "$@"
