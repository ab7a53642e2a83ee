#!/usr/bin/env bash
# Decode tok/s of `metallic generate` with the profiling recorder compiled out
# (--no-default-features), compiled in but disabled (the default build, no
# profiling switches), and enabled (METALLIC_PROFILING_ENABLED=1), measured in
# one run: the variants alternate round by round, medians are reported.
#
#   scripts/profiling-overhead.sh            (env: MODEL, N, ROUNDS, THREADS, PROMPT)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-assets/SmolLM2-135M-Instruct.Q4_1.gguf}
N=${N:-128}
ROUNDS=${ROUNDS:-7}
THREADS=${THREADS:-2}
PROMPT=${PROMPT:-"The capital of France is"}
OUT=target/profiling-overhead
mkdir -p "$OUT"

cargo build --release -q -p metallic-cli --no-default-features
cp target/release/metallic "$OUT/metallic-compiled-out"
cargo build --release -q -p metallic-cli
cp target/release/metallic "$OUT/metallic-compiled-in"

run() { # variant -> decode tok/s
  local bin=$1 env=()
  [ "$2" = on ] && env=(METALLIC_PROFILING_ENABLED=1)
  env -u METALLIC_PROFILING_ENABLED -u METALLIC_METRICS_JSONL_PATH "${env[@]}" \
    "$OUT/metallic-$bin" generate -m "$MODEL" "$PROMPT" -n "$N" --temp 0 --ignore-eos \
    -t "$THREADS" --output-format json 2>/dev/null |
    grep -o '"decode_tokens_per_s":[0-9.]*' | cut -d: -f2
}

declare -A all
variants=("compiled-out off" "compiled-in off" "compiled-in on")
for r in $(seq "$ROUNDS"); do
  # Rotate the order each round so drift in machine load spreads evenly.
  for i in 0 1 2; do
    v=${variants[$(((i + r) % 3))]}
    t=$(run $v)
    all[$v]+="$t "
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo "model=$MODEL tokens=$N threads=$THREADS rounds=$ROUNDS $(date -u +%F)"
for v in "${variants[@]}"; do
  set -- $v
  label="recorder $1, profiling $2"
  printf '%-36s median %6.2f tok/s   (runs: %s)\n' "$label" "$(echo "${all[$v]}" | median)" "${all[$v]}"
done
