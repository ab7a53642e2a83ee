#!/usr/bin/env bash
# Builds llama.cpp's tools once into .llamacpp/ and prints the directory of the
# binaries. llama.cpp comes from the source distribution of the PyPI package
# llama-cpp-python (it vendors llama.cpp), built with cmake (pip-installed if
# missing) for the CPU's named x86 levels.
#
#   bin=$(scripts/llamacpp.sh llama-bench llama-quantize)
#
# Each argument is a cmake target; those already built are not rebuilt.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.llamacpp
pkg=llama-cpp-python
ver=0.3.36
bin="$dir/src/vendor/llama.cpp/build/bin"

missing=()
for t in "$@"; do [ -x "$bin/$t" ] || missing+=("$t"); done
if [ ${#missing[@]} -gt 0 ]; then
  mkdir -p "$dir"
  command -v cmake >/dev/null || python3 -m pip install --quiet cmake >&2
  if [ ! -d "$dir/src" ]; then
    # The sdist only; its build dependencies may come as wheels.
    python3 -m pip download --quiet --no-deps --no-binary "$pkg" "$pkg==$ver" -d "$dir" >&2
    mkdir -p "$dir/src"
    tar xzf "$dir"/llama_cpp_python-"$ver".tar.gz -C "$dir/src" --strip-components=1
  fi
  # Not GGML_NATIVE: on VMs that report AMX without enabling its tiles, ggml's
  # AMX matmul crashes. Name the x86 levels the CPU has instead.
  simd=(-DGGML_NATIVE=OFF)
  for f in avx avx2 fma f16c avx512f:AVX512 avx512_vnni:AVX512_VNNI avx512bw avx_vnni; do
    flag=${f%%:*}; opt=${f#*:}; [ "$opt" = "$f" ] && opt=${f^^}
    [ "$opt" = "AVX512BW" ] && continue
    grep -qw "$flag" /proc/cpuinfo && simd+=("-DGGML_$opt=ON")
  done
  (cd "$dir/src/vendor/llama.cpp" &&
    cmake -B build -DCMAKE_BUILD_TYPE=Release "${simd[@]}" -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null &&
    cmake --build build -j "$(nproc)" --target "${missing[@]}" >/dev/null)
fi
echo "$bin"
