#!/usr/bin/env bash
# metallic vs llama.cpp on the CPU: the same GGUF files, the same machine,
# alternating runs.
#
#   scripts/bench-vs-llamacpp.sh [MODEL.gguf...] [THREADS]
#
# Without models it runs every row of the CPU comparison: SmolLM2-135M Q4_1
# (assets/) and synthetic Qwen2.5-0.5B in Q8_0, Q4_0, F16 and Q4_K (written
# once with `metallic synth` into .bench/). Each program runs pp128, pp512 and
# tg128 (-r 3) per model and thread count, llama.cpp then metallic, and the
# whole sweep twice (round 1, round 2), so that a drift of the machine shows
# as a difference between rounds rather than between the programs. Both time
# with a monotonic host clock.
#
# Environment:
#   THREADS      thread counts, comma-separated (default: all cores), e.g. 2,16;
#                a numeric argument sets it too
#   METALLIC     a prebuilt `metallic` binary (default: cargo build --release)
#   LLAMA_BENCH  a prebuilt llama-bench (default: scripts/llamacpp.sh build cpu,
#                i.e. llama.cpp from the llama-cpp-python sdist in .llamacpp/)
#   TOKENIZER    the Qwen2 tokenizer.json for synth (default assets/qwen2/tokenizer.json)
#   ROUNDS       rounds of the sweep (default 2)
#
# On another host (e.g. the GPU machine's 16-core CPU, no network): carry the
# `metallic` binary, a slim llama.cpp source (`scripts/llamacpp.sh slim`), the
# SmolLM2 GGUF and the tokenizer; build llama.cpp there with
# `scripts/llamacpp.sh build cpu SRC BUILD`, then run
#   METALLIC=./metallic LLAMA_BENCH=BUILD/llama-bench THREADS=2,16 \
#     scripts/bench-vs-llamacpp.sh
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-$(nproc)}
rounds=${ROUNDS:-2}
tokenizer=${TOKENIZER:-assets/qwen2/tokenizer.json}

if [ -z "${LLAMA_BENCH:-}" ]; then
  LLAMA_BENCH=.llamacpp/src/vendor/llama.cpp/build/bin/llama-bench
  [ -x "$LLAMA_BENCH" ] || LLAMA_BENCH="$(./scripts/llamacpp.sh build cpu)/llama-bench"
fi
if [ -z "${METALLIC:-}" ]; then
  cargo build --release -p metallic-cli >/dev/null
  METALLIC=./target/release/metallic
fi

models=()
for a in "$@"; do
  if [[ $a =~ ^[0-9,]+$ ]]; then threads=$a; else models+=("$a"); fi
done
if [ ${#models[@]} -eq 0 ]; then
  models=(assets/SmolLM2-135M-Instruct.Q4_1.gguf)
  mkdir -p .bench
  for dt in Q8_0 Q4_0 F16 Q4_K; do
    f=.bench/qwen2.5-0.5b-synth-$dt.gguf
    if [ ! -s "$f" ]; then
      "$METALLIC" synth --arch qwen2 --preset qwen2.5-0.5b --dtype "$dt" \
        --tokenizer "$tokenizer" -o "$f.tmp" >/dev/null && mv "$f.tmp" "$f"
    fi
    models+=("$f")
  done
fi

echo "# $(date -u +%FT%TZ) $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- || uname -m), $(nproc) cores"
for round in $(seq 1 "$rounds"); do
  for model in "${models[@]}"; do
    for t in ${threads//,/ }; do
      echo "## round $round, $(basename "$model"), $t threads: llama.cpp"
      "$LLAMA_BENCH" -m "$model" -p 128,512 -n 128 -r 3 -t "$t" -o md
      echo "## round $round, $(basename "$model"), $t threads: metallic"
      "$METALLIC" bench -m "$model" -p 128,512 -n 128 -r 3 -t "$t"
    done
  done
done
