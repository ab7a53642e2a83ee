#!/usr/bin/env bash
# metallic vs llama.cpp with CUDA on a GPU machine without network: the same
# GGUF files, the same GPU, alternating runs. Used after
# `scripts/device-check.sh pack`, which carries the `metallic` binary and a
# slim llama.cpp source tarball (`scripts/llamacpp.sh slim`).
#
#   gpu-compare.sh build SRC.tar.gz          start building llama.cpp with CUDA in the
#                                            background (its own process session) into
#                                            /tmp/llama (llama-bench, llama-perplexity,
#                                            llama-server); returns at once
#   gpu-compare.sh wait                      wait (up to 15 min) for that build
#   gpu-compare.sh bench METALLIC MODEL...   two rounds of llama-bench -ngl 99 -fa 1
#                                            and metallic bench --device cuda, pp512 and
#                                            tg128, REPS (default 5) repetitions each, per
#                                            model, in turn; a missing model is skipped
#
# Both programs time with CUDA events/syncs of their own; their tables are
# printed as they come, and a summary of tg128 and pp512 means follows.
set -uo pipefail
llama=/tmp/llama
log=/tmp/llama-build.log

build() {
  local tgz=${1:?usage: build SRC.tar.gz}
  [ -x "$llama/build/bin/llama-bench" ] && { echo "llama.cpp already built"; return 0; }
  rm -rf "$llama" && mkdir -p "$llama"
  tar xzf "$tgz" -C "$llama" --strip-components=1
  # llama-bench and llama-perplexity first; then, where the source has
  # tools/ui (older slim tarballs dropped it), the same build folder is
  # configured again with the server and llama-server built: optional, its
  # failure (e.g. the UI's configure step) leaves the others usable.
  local cfg="-DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DGGML_NATIVE=OFF \
      -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH:-90}"
  setsid nohup bash -c "cmake -S $llama -B $llama/build $cfg -DLLAMA_BUILD_SERVER=OFF > $log 2>&1 &&
    cmake --build $llama/build -j \$(nproc) --target llama-bench llama-perplexity >> $log 2>&1;
    rc=\$?
    if [ -f $llama/tools/ui/CMakeLists.txt ] && [ \$rc = 0 ]; then
      { cmake -S $llama -B $llama/build -DLLAMA_BUILD_SERVER=ON &&
        cmake --build $llama/build -j \$(nproc) --target llama-server; } >> $log 2>&1 ||
        echo 'llama-server did not build (optional: serve comparisons only)' >> $log
    fi
    echo \"build exit \$rc\" >> $log" > /dev/null 2>&1 < /dev/null &
  echo "building llama.cpp (CUDA) in the background: $log"
}

wait_build() {
  local t=0
  until grep -q "build exit" "$log" 2>/dev/null; do
    sleep 5; t=$((t + 5))
    [ $t -ge 900 ] && { echo "llama.cpp build still running after 15 min"; return 1; }
  done
  tail -3 "$log"
  [ -x "$llama/build/bin/llama-bench" ]
}

bench() {
  local m=${1:?usage: bench METALLIC MODEL...}; shift
  wait_build || return 1
  local lb="$llama/build/bin/llama-bench" out=${OUT:-/tmp/out}
  mkdir -p "$out"
  local reps=${REPS:-5}
  for model in "$@"; do
    [ -s "$model" ] || { echo "## $model: missing, skipped"; continue; }
    for round in 1 2; do
      echo "## $(basename "$model") round $round: llama.cpp"
      "$lb" -m "$model" -ngl 99 -fa 1 -p 512 -n 128 -r "$reps" -o md 2>/dev/null | tee -a "$out/compare.log"
      echo "## $(basename "$model") round $round: metallic"
      "$m" bench --device cuda -m "$model" -p 512 -n 128 -r "$reps" 2>/dev/null | tee -a "$out/compare.log"
    done
  done
}

case "${1:-}" in
  build) shift; build "$@" ;;
  wait) wait_build ;;
  bench) shift; bench "$@" ;;
  *) echo "usage: $0 build SRC.tar.gz | wait | bench METALLIC MODEL..." >&2; exit 2 ;;
esac
