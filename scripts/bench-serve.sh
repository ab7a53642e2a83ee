#!/usr/bin/env bash
# metallic serve vs llama-server: N concurrent streaming clients on the same
# GGUF and machine, the two servers in turn, twice, at each stream count.
#
#   scripts/bench-serve.sh [MODEL.gguf] [THREADS] [STREAMS...]
#
# Defaults: SmolLM2 from assets/, every core, 1 4 16 streams; each client
# count sends 4 requests per client of 64 tokens (metallic bench-serve).
# llama-server is built like scripts/bench-vs-llamacpp.sh builds llama-bench
# (the llama-cpp-python sdist, in .llamacpp/), unless LLAMA_SERVER names a
# binary. METALLIC names the metallic binary (default: a release build).
# DEVICE=cuda runs `metallic serve --device cuda` and llama-server with every
# layer offloaded (-ngl 999; LLAMA_SERVER must then name a CUDA build: the
# one built here is CPU-only). SERVE_FLAGS adds flags to metallic serve
# (e.g. "--deterministic --kv-type f16"); TOKENS sets the tokens a request
# generates (64); KV_MEMORY the MiB of metallic's KV cache (512 on cpu,
# 8192 on cuda). THREADS is ignored on cuda (the GPU does the work).
# PORT sets the port both servers take in turn (18080). Servers listen on
# 127.0.0.1 only; every run is bounded by a timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-assets/SmolLM2-135M-Instruct.Q4_1.gguf}
threads=${2:-$(nproc)}
shift $(( $# > 2 ? 2 : $# ))
streams=("$@"); [ ${#streams[@]} -gt 0 ] || streams=(1 4 16)
dir=.llamacpp
pkg=llama-cpp-python
ver=0.3.36
server=${LLAMA_SERVER:-$dir/src/vendor/llama.cpp/build/bin/llama-server}
port=${PORT:-18080}
device=${DEVICE:-cpu}
tokens=${TOKENS:-64}
read -r -a serve_flags <<< "${SERVE_FLAGS:-}"
case "$device" in
  cpu) llama_dev=(); kv_memory=${KV_MEMORY:-512} ;;
  cuda) llama_dev=(-ngl 999); kv_memory=${KV_MEMORY:-8192} ;;
  *) echo "DEVICE must be cpu or cuda, not $device" >&2; exit 2 ;;
esac

if [ ! -x "$server" ]; then
  mkdir -p "$dir"
  command -v cmake >/dev/null || python3 -m pip install --quiet cmake
  if [ ! -d "$dir/src" ]; then
    python3 -m pip download --quiet --no-deps --no-binary "$pkg" "$pkg==$ver" -d "$dir"
    mkdir -p "$dir/src"
    tar xzf "$dir"/llama_cpp_python-"$ver".tar.gz -C "$dir/src" --strip-components=1
  fi
  simd=(-DGGML_NATIVE=OFF)
  for f in avx avx2 fma f16c avx512f:AVX512 avx512_vnni:AVX512_VNNI avx512bw avx_vnni; do
    flag=${f%%:*}; opt=${f#*:}; [ "$opt" = "$f" ] && opt=${f^^}
    [ "$opt" = "AVX512BW" ] && continue
    grep -qw "$flag" /proc/cpuinfo && simd+=("-DGGML_$opt=ON")
  done
  (cd "$dir/src/vendor/llama.cpp" &&
    cmake -B build -DCMAKE_BUILD_TYPE=Release "${simd[@]}" -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=ON >/dev/null &&
    cmake --build build -j "$(nproc)" --target llama-server >/dev/null)
fi
if [ -z "${METALLIC:-}" ]; then
  cargo build --release -p metallic-cli >/dev/null
  METALLIC=./target/release/metallic
fi

pid=""
stop() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; pid=""; }
trap stop EXIT
wait_health() {
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "server on port $port did not become healthy in 60 s" >&2; return 1
}
bench() {
  timeout 900 "$METALLIC" bench-serve --url "http://127.0.0.1:$port" -c "$1" -r $((4 * $1)) -n "$tokens" || true
}

for n in "${streams[@]}"; do
  for round in 1 2; do
    echo "## $n streams, round $round: llama-server ${llama_dev[*]} (-np $n -cb)"
    "$server" -m "$model" -t "$threads" "${llama_dev[@]}" -np "$n" -cb -c $((n * (tokens + 448))) \
      --host 127.0.0.1 --port "$port" >/dev/null 2>&1 & pid=$!
    wait_health; bench "$n"; stop
    echo "## $n streams, round $round: metallic serve --device $device ${serve_flags[*]} (--max-seqs $n)"
    "$METALLIC" serve -m "$model" -t "$threads" --device "$device" "${serve_flags[@]}" \
      --kv-memory "$kv_memory" --max-seqs "$n" --step-tokens $((n > 256 ? n : 256)) --ctx-size $((tokens + 448)) \
      --host 127.0.0.1 --port "$port" >/dev/null 2>&1 & pid=$!
    wait_health; bench "$n"; stop
  done
done
