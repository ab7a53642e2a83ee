#!/usr/bin/env bash
# metallic vs llama.cpp on the same GGUF, same machine, alternating runs.
#
#   scripts/bench-vs-llamacpp.sh [MODEL.gguf] [THREADS]
#
# llama.cpp comes from the source distribution of the PyPI package
# llama-cpp-python (it vendors llama.cpp), built once into .llamacpp/ with
# cmake (pip-installed if missing) for the native CPU. Both programs run
# pp128, pp512 and tg128, three repetitions, twice each in turn.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-assets/SmolLM2-135M-Instruct.Q4_1.gguf}
threads=${2:-$(nproc)}
dir=.llamacpp
pkg=llama-cpp-python
ver=0.3.36
bench="$dir/src/vendor/llama.cpp/build/bin/llama-bench"

if [ ! -x "$bench" ]; then
  mkdir -p "$dir"
  command -v cmake >/dev/null || python3 -m pip install --quiet cmake
  if [ ! -d "$dir/src" ]; then
    # The sdist only; its build dependencies may come as wheels.
    python3 -m pip download --quiet --no-deps --no-binary "$pkg" "$pkg==$ver" -d "$dir"
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
    cmake --build build -j "$(nproc)" --target llama-bench >/dev/null)
fi
cargo build --release -p metallic-cli >/dev/null
for round in 1 2; do
  echo "## round $round: llama.cpp"
  "$bench" -m "$model" -p 128,512 -n 128 -r 3 -t "$threads"
  echo "## round $round: metallic"
  ./target/release/metallic bench -m "$model" -p 128,512 -n 128 -r 3 -t "$threads"
done
