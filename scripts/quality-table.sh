#!/usr/bin/env bash
# The quality table of docs/quality.md: perplexity, mean KL divergence and
# top-token agreement of every matmul implementation of one backend (forced
# with METALLIC_MATMUL_BACKEND) and of its default path, against the float32
# model run by metallic's reference path on the CPU, plus llama.cpp's
# llama-perplexity figures for the same files, text and context.
#
#   scripts/quality-table.sh [--device cpu|cuda] [--out FILE.md]
#
# Needs only the `metallic` binary, llama-perplexity and these files (no cargo,
# no network), so it runs as-is on a machine that was handed them:
#   assets/SmolLM2-135M-Instruct.Q4_1.gguf, assets/qwen2/tokenizer.json,
#   assets/text/alice29.txt                      (scripts/fetch-assets.sh)
# Environment:
#   METALLIC           the metallic binary (default target/release/metallic, else PATH)
#   LLAMA_PERPLEXITY   llama-perplexity (default .llamacpp/src/vendor/llama.cpp/build/bin/
#                      for cpu, build-cuda/bin/ for cuda; scripts/llamacpp.sh builds it);
#                      when missing, the llama.cpp rows say so
#   QUALITY_DIR        work folder for the F32 files and saved distributions
#                      (default .quality/; several GB for the Qwen2.5-0.5B files)
#   TEXT               the text (default assets/text/alice29.txt)
#   SMOL_CTX, SMOL_CHUNKS   SmolLM2 context and chunks (default 512, 20)
#   QWEN_CTX, QWEN_CHUNKS   synthetic Qwen2.5-0.5B context and chunks (default 256, 2)
#   QWEN_TYPES         the synthetic Qwen2.5-0.5B files scored against its F32 reference
#                      (default "Q8_0 Q4_0 Q4_K_M Q5_K_M"; the mixes with llama-quantize's
#                      per-tensor types, as `metallic synth --dtype Q4_K_M` writes them)
#   THREADS            CPU threads for metallic and llama.cpp (default: all cores)
#   ONLY               smollm2 or qwen: make only that model's rows
#
# References: SmolLM2's is the Q4_1 file dequantised to F32 by
# `metallic quantize`; the synthetic Qwen2.5-0.5B's is `metallic synth --dtype F32`
# with the seed of its Q8_0/Q4_0 files (synth draws the same float32 weights for
# every type, then quantises). Each reference runs on the CPU with
# METALLIC_MATMUL_BACKEND=gemv (dequantise a row, float32 dot) and saves its
# distributions; llama.cpp's reference is the same F32 file under llama-perplexity
# --kl-divergence-base.
set -euo pipefail
cd "$(dirname "$0")/.."

device=cpu
out=
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=${2:?--device needs cpu or cuda}; shift 2 ;;
    --out) out=${2:?--out needs a file}; shift 2 ;;
    -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$device" in cpu|cuda) ;; *) echo "--device cpu or cuda, not $device" >&2; exit 2 ;; esac

bin=${METALLIC:-target/release/metallic}
if [ ! -x "$bin" ]; then
  bin=$(command -v metallic || true)
  [ -n "$bin" ] || { echo "no metallic binary: build it (cargo build --release) or set METALLIC" >&2; exit 1; }
fi
if [ "$device" = cuda ]; then
  lp=${LLAMA_PERPLEXITY:-.llamacpp/src/vendor/llama.cpp/build-cuda/bin/llama-perplexity}
  ngl=(-ngl 99)
else
  lp=${LLAMA_PERPLEXITY:-.llamacpp/src/vendor/llama.cpp/build/bin/llama-perplexity}
  ngl=()
fi
dir=${QUALITY_DIR:-.quality}
text=${TEXT:-assets/text/alice29.txt}
threads=${THREADS:-$(nproc)}
mkdir -p "$dir"
for f in assets/SmolLM2-135M-Instruct.Q4_1.gguf assets/qwen2/tokenizer.json "$text"; do
  [ -s "$f" ] || { echo "missing $f: run scripts/fetch-assets.sh" >&2; exit 1; }
done

log() { echo "quality-table: $*" >&2; }
rows=()

# field JSON PATH: one number from metallic's --json output.
field() { python3 -c 'import json,sys; v=json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."): v=v[k]
print(v)' "$1" "$2"; }
fmt() { python3 -c 'import sys; print(format(float(sys.argv[1]), sys.argv[2]))' "$1" "$2"; }

# metallic_row LABEL MODEL TYPE IMPL CTX CHUNKS BASE: one metallic row (IMPL
# "default" leaves the dispatch to the backend; "default-decode" too, one
# token a step, so that the row shows the decode default's arithmetic).
metallic_row() {
  local label=$1 model=$2 ty=$3 impl=$4 ctx=$5 chunks=$6 base=$7
  local j="$dir/run.json" env=()
  case "$impl" in default | default-decode) ;; *) env=(METALLIC_MATMUL_BACKEND="$impl") ;; esac
  # CUDA's matrix-vector kernels run one row a step only (decode's shape):
  # forced, they are scored one token a step.
  local step=()
  case "$device:$impl" in *:default-decode) step=(-b 1) ;; cuda:default | cuda:cublas | cpu:*) ;; *) step=(-b 1) ;; esac
  log "$label $ty $device $impl ..."
  if env "${env[@]}" "$bin" perplexity -m "$model" -f "$text" -c "$ctx" --chunks "$chunks" "${step[@]}" \
      --device "$device" -t "$threads" --kld "$base" --json >"$j" 2>"$dir/run.err"; then
    rows+=("| $label | $ty | metallic $device \`$impl\` | $(fmt "$(field "$j" kld.ppl.ppl)" .4f) ± $(fmt "$(field "$j" kld.ppl.ppl_error)" .4f) | $(fmt "$(field "$j" kld.mean_kld)" .3g) ± $(fmt "$(field "$j" kld.mean_kld_error)" .2g) | $(fmt "$(field "$j" kld.kld_p999)" .3g) | $(fmt "$(field "$j" kld.same_top_pct)" .2f) |")
  else
    rows+=("| $label | $ty | metallic $device \`$impl\` | n/a: $(tail -1 "$dir/run.err" | tr '|' '/' | cut -c1-120) | | | |")
  fi
}

# llama_rows LABEL REF QUANT CTX CHUNKS TYPE: llama-perplexity's reference and
# quantised rows (it prints its KLD summary only over 100 or more positions).
llama_rows() {
  local label=$1 ref=$2 q=$3 ctx=$4 chunks=$5 ty=$6
  if [ ! -x "$lp" ]; then
    rows+=("| $label | $ty | llama.cpp $device | n/a: no llama-perplexity at $lp (set LLAMA_PERPLEXITY) | | | |")
    return
  fi
  local kb="$dir/$(basename "$ref" .gguf).llama-$device-$ctx-$chunks.kld"
  if [ ! -s "$kb" ]; then
    log "$label F32 llama.cpp $device (base) ..."
    "$lp" -m "$ref" -f "$text" -c "$ctx" --chunks "$chunks" -t "$threads" "${ngl[@]}" \
      --kl-divergence-base "$kb.part" >"$kb.log" 2>&1
    mv "$kb.part" "$kb"
  fi
  local base_ppl
  base_ppl=$(grep -o 'Final estimate: PPL = [0-9.]* +/- [0-9.]*' "$kb.log" | sed 's/Final estimate: PPL = //; s|+/-|±|' || true)
  log "$label $ty llama.cpp $device ..."
  local l="$dir/$(basename "$q" .gguf).llama-$device-$ctx-$chunks.log"
  "$lp" -m "$q" -f "$text" -c "$ctx" --chunks "$chunks" -t "$threads" "${ngl[@]}" \
    --kl-divergence-base "$kb" --kl-divergence >"$l" 2>&1
  get() { grep -m1 "^$1" "$l" | sed 's/^[^:]*: *//; s/ *%$//'; }
  [ -n "$base_ppl" ] && rows+=("| $label | F32 | llama.cpp $device | $base_ppl | (its own base) | | |")
  if grep -q '^Same top p:' "$l"; then
    rows+=("| $label | $ty | llama.cpp $device | $(get 'Mean PPL(Q)') | $(get 'Mean    KLD:') | $(get '99.9%   KLD:') | $(get 'Same top p:') |")
  else
    rows+=("| $label | $ty | llama.cpp $device | n/a: no summary in $l (llama-perplexity needs 100+ positions) | | | |")
  fi
}

# table LABEL REF QUANT... : reference base on the CPU, then every row.
table() {
  local label=$1 ref=$2 ctx=$3 chunks=$4; shift 4
  local base="$dir/$(basename "$ref" .gguf).gemv-$ctx-$chunks.base"
  local j="$dir/base.json"
  if [ ! -s "$base" ]; then
    log "$label F32 reference (cpu gemv) ..."
    METALLIC_MATMUL_BACKEND=gemv "$bin" perplexity -m "$ref" -f "$text" -c "$ctx" --chunks "$chunks" \
      -t "$threads" --save-logits "$base.part" --json >"$j"
    mv "$base.part" "$base"
    cp "$j" "$base.json"
  fi
  rows+=("| $label | F32 | metallic cpu \`gemv\` (the reference) | $(fmt "$(field "$base.json" ppl.ppl)" .4f) ± $(fmt "$(field "$base.json" ppl.ppl_error)" .4f) | 0 | 0 | 100 |")
  local impls
  impls=$("$bin" perplexity -m "$ref" -f "$text" -c "$ctx" --chunks 1 --device "$device" -t "$threads" --json 2>/dev/null \
    | python3 -c 'import json,sys; print(" ".join(json.load(sys.stdin)["matmul_impls"]))')
  for q in "$@"; do
    local ty
    ty=$(basename "$q" .gguf); ty=${ty##*.}; ty=${ty##*-}
    for impl in $impls default default-decode; do
      metallic_row "$label" "$q" "$ty" "$impl" "$ctx" "$chunks" "$base"
    done
    llama_rows "$label" "$ref" "$q" "$ctx" "$chunks" "$ty"
  done
}

only=${ONLY:-}
case "$only" in ''|smollm2|qwen) ;; *) echo "ONLY=smollm2 or qwen, not $only" >&2; exit 2 ;; esac

# SmolLM2-135M-Instruct: the real model, Q4_1 against its F32 dequantisation.
if [ "$only" != qwen ]; then
  smol_q=assets/SmolLM2-135M-Instruct.Q4_1.gguf
  smol_f=$dir/SmolLM2-135M-Instruct.F32.gguf
  [ -s "$smol_f" ] || "$bin" quantize "$smol_q" "$smol_f" F32 >&2
  table SmolLM2-135M "$smol_f" "${SMOL_CTX:-512}" "${SMOL_CHUNKS:-20}" "$smol_q"
fi

# Synthetic Qwen2.5-0.5B (random weights, seed 1): each of QWEN_TYPES against F32.
if [ "$only" != smollm2 ]; then
  read -r -a qwen_types <<< "${QWEN_TYPES:-Q8_0 Q4_0 Q4_K_M Q5_K_M}"
  qwen_files=()
  for t in F32 "${qwen_types[@]}"; do
    f=$dir/qwen25-05b-synth.$t.gguf
    [ -s "$f" ] || "$bin" synth --arch qwen2 --preset qwen2.5-0.5b --dtype "$t" \
      --tokenizer assets/qwen2/tokenizer.json --seed 1 -o "$f" >&2
    [ "$t" = F32 ] || qwen_files+=("$f")
  done
  table "Qwen2.5-0.5B (synthetic)" "$dir/qwen25-05b-synth.F32.gguf" "${QWEN_CTX:-256}" "${QWEN_CHUNKS:-2}" \
    "${qwen_files[@]}"
fi

{
  echo "<!-- scripts/quality-table.sh --device $device ${only:+(ONLY=$only) }on $(date -u +%Y-%m-%d), text $(basename "$text"), $("$bin" --version); SmolLM2 -c ${SMOL_CTX:-512} --chunks ${SMOL_CHUNKS:-20}, Qwen -c ${QWEN_CTX:-256} --chunks ${QWEN_CHUNKS:-2} -->"
  echo "| model | weights | path | PPL | mean KLD vs F32 | 99.9% KLD | same top % |"
  echo "| --- | --- | --- | --- | --- | --- | --- |"
  printf '%s\n' "${rows[@]}"
} | if [ -n "$out" ]; then tee "$out"; else cat; fi
