#!/usr/bin/env bash
# Do metallic's quantize and synth give every tensor the type llama-quantize
# gives it? For each model layout and file type: a synthetic F16 model
# (metallic synth), quantised by llama-quantize (built from the llama-cpp-python
# sdist by scripts/llamacpp.sh build cpu) and by `metallic quantize`, and written directly
# by `metallic synth --dtype TYPE`; the three files' tensor types, and the
# per-type tensor counts and bytes of the first two, must agree.
#
#   scripts/reference/compare-quant-types.sh [FTYPES] [LAYOUTS]
#
#   FTYPES   comma list (default Q4_K_M,Q5_K_M,Q6_K)
#   LAYOUTS  comma list of arch:preset (default
#            qwen2:qwen2.5-0.5b,qwen2:qwen2.5-1.5b,llama:smollm2-135m)
#
# Environment: METALLIC (a built metallic binary; default: a release build),
# LLAMA_QUANTIZE (a llama-quantize binary; default: built into .llamacpp/),
# WORK (scratch directory, default a temporary one, removed at the end).
# Exit status 1 when any tensor's type differs.
set -euo pipefail
cd "$(dirname "$0")/../.."
ftypes=${1:-Q4_K_M,Q5_K_M,Q6_K}
layouts=${2:-qwen2:qwen2.5-0.5b,qwen2:qwen2.5-1.5b,llama:smollm2-135m}

if [ -z "${METALLIC:-}" ]; then
  cargo build --release -p metallic-cli >/dev/null
  METALLIC=target/release/metallic
fi
if [ -z "${LLAMA_QUANTIZE:-}" ]; then
  LLAMA_QUANTIZE=.llamacpp/src/vendor/llama.cpp/build/bin/llama-quantize
  [ -x "$LLAMA_QUANTIZE" ] || LLAMA_QUANTIZE="$(scripts/llamacpp.sh build cpu | tail -1)/llama-quantize"
fi
[ -f assets/qwen2/tokenizer.json ] || scripts/fetch-assets.sh
if [ -z "${WORK:-}" ]; then
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
fi

# compare A B [C]: per-tensor types of A vs B (and C); per-type count/bytes of A vs B.
compare() {
  python3 - "$@" <<'PY'
import json, subprocess, sys, os
def load(p):
    j = json.loads(subprocess.run([os.environ["METALLIC"], "inspect", "--json", p],
                                  check=True, capture_output=True, text=True).stdout)
    return {t["name"]: t["type"] for t in j["tensors"]}, \
           sorted((b["type"], b["tensors"], b["bytes"]) for b in j["by_type"])
ref, ref_by = load(sys.argv[1])
bad = 0
for other in sys.argv[2:]:
    types, by = load(other)
    for name in sorted(set(ref) | set(types)):
        if ref.get(name) != types.get(name):
            bad += 1
            print(f"  DIFF {name}: llama-quantize {ref.get(name)}, {os.path.basename(other)} {types.get(name)}")
    if other == sys.argv[2] and by != ref_by:
        bad += 1
        print(f"  DIFF per-type counts/bytes: llama-quantize {ref_by}, metallic {by}")
print("  " + ", ".join(f"{t} x{n} ({b} B)" for t, n, b in ref_by))
print(f"  {len(ref)} tensors: " + ("all types agree" if bad == 0 else f"{bad} differences"))
sys.exit(1 if bad else 0)
PY
}

export METALLIC
status=0
IFS=, read -ra FT <<<"$ftypes"
IFS=, read -ra LA <<<"$layouts"
for layout in "${LA[@]}"; do
  arch=${layout%%:*}; preset=${layout#*:}
  if [ "$arch" = qwen2 ]; then tok=assets/qwen2/tokenizer.json
  else tok=assets/SmolLM2-135M-Instruct.Q4_1.gguf; fi
  base="$WORK/$preset-f16.gguf"
  "$METALLIC" synth --arch "$arch" --preset "$preset" --dtype F16 --tokenizer "$tok" -o "$base" 2>/dev/null
  for ft in "${FT[@]}"; do
    echo "== $preset $ft"
    "$LLAMA_QUANTIZE" "$base" "$WORK/llama.gguf" "$ft" "$(nproc)" >"$WORK/llama-quantize.log" 2>&1 ||
      { tail -20 "$WORK/llama-quantize.log"; exit 2; }
    "$METALLIC" quantize "$base" "$WORK/metallic.gguf" "$ft" 2>/dev/null
    "$METALLIC" synth --arch "$arch" --preset "$preset" --dtype "$ft" --mix --tokenizer "$tok" \
      -o "$WORK/synth.gguf" 2>/dev/null
    compare "$WORK/llama.gguf" "$WORK/metallic.gguf" "$WORK/synth.gguf" || status=1
    rm -f "$WORK/llama.gguf" "$WORK/metallic.gguf" "$WORK/synth.gguf"
  done
  rm -f "$base"
done
exit $status
