#!/usr/bin/env bash
# llama.cpp, the peer every speed and quality figure is compared with, from the
# source distribution of the PyPI package llama-cpp-python (it vendors
# llama.cpp), so that every machine builds the same source.
#
#   scripts/llamacpp.sh src              download and unpack the sdist into .llamacpp/src
#   scripts/llamacpp.sh slim OUT.tar.gz  a small source tarball to carry to a machine
#                                        without network (no models/, docs/, tests, UI,
#                                        or backends other than CPU and CUDA)
#   scripts/llamacpp.sh build cpu|cuda [SRC] [BUILD]
#                                        build llama-bench, llama-perplexity and
#                                        llama-quantize (+ llama-server for cpu)
#                                        from SRC (default .llamacpp/src/vendor/llama.cpp)
#                                        into BUILD (default SRC/build or SRC/build-cuda)
#
# The CPU build names the x86 levels the CPU has rather than GGML_NATIVE: on VMs
# that report AMX without enabling its tiles, ggml's AMX matmul crashes. The
# CUDA build targets sm_90 (Hopper) unless CUDA_ARCH says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
pkg=llama-cpp-python
ver=0.3.36
dir=.llamacpp

src() {
  [ -d "$dir/src/vendor/llama.cpp" ] && return 0
  mkdir -p "$dir"
  python3 -m pip download --quiet --no-deps --no-binary "$pkg" "$pkg==$ver" -d "$dir"
  mkdir -p "$dir/src"
  tar xzf "$dir/llama_cpp_python-$ver.tar.gz" -C "$dir/src" --strip-components=1
}

slim() {
  local out=${1:?usage: slim OUT.tar.gz}
  src
  # tools/ui stays (less its tests): llama-server's build needs its CMake target.
  local ex=(--exclude=llama.cpp/models --exclude=llama.cpp/docs --exclude='llama.cpp/build*'
    --exclude=llama.cpp/benches --exclude=llama.cpp/tools/ui/tests --exclude=llama.cpp/tools/mtmd/legacy-models
    --exclude=llama.cpp/media --exclude=llama.cpp/gguf-py)
  for b in vulkan sycl opencl cann metal hexagon et webgpu openvino virtgpu musa zdnn kompute blas; do
    ex+=("--exclude=llama.cpp/ggml/src/ggml-$b")
  done
  tar czf "$out" "${ex[@]}" -C "$dir/src/vendor" llama.cpp
  ls -l "$out"
}

build() {
  local kind=${1:?usage: build cpu|cuda [SRC] [BUILD]}
  local s=${2:-$dir/src/vendor/llama.cpp}
  [ "$s" = "$dir/src/vendor/llama.cpp" ] && src
  command -v cmake >/dev/null || python3 -m pip install --quiet cmake
  local opts=(-DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DGGML_NATIVE=OFF)
  local targets=(llama-bench llama-perplexity llama-quantize)
  local b
  if [ "$kind" = cuda ]; then
    b=${3:-$s/build-cuda}
    opts+=(-DGGML_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH:-90}" -DLLAMA_BUILD_SERVER=OFF)
  else
    b=${3:-$s/build}
    for f in avx avx2 fma f16c avx512f:AVX512 avx512_vnni:AVX512_VNNI avx_vnni; do
      local flag=${f%%:*} opt=${f#*:}
      [ "$opt" = "$f" ] && opt=${f^^}
      grep -qw "$flag" /proc/cpuinfo && opts+=("-DGGML_$opt=ON")
    done
    opts+=(-DLLAMA_BUILD_SERVER=ON)
    targets+=(llama-server)
  fi
  cmake -S "$s" -B "$b" "${opts[@]}" >/dev/null
  cmake --build "$b" -j "$(nproc)" --target "${targets[@]}" >/dev/null
  echo "$b/bin"
}

case "${1:-}" in
  src) src ;;
  slim) shift; slim "$@" ;;
  build) shift; build "$@" ;;
  *) echo "usage: $0 src | slim OUT.tar.gz | build cpu|cuda [SRC] [BUILD]" >&2; exit 2 ;;
esac
