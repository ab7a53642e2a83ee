#!/usr/bin/env bash
# Golden logits from Hugging Face transformers for the synthetic models the
# parity tests build in memory (same preset, dtype, tokenizer and seed, so the
# same bytes): tiny Qwen2 in F32 and Q8_0 (16-token prompt, 8 greedy decode
# steps), a full-size Qwen2.5-0.5B in F16 (one prompt), llama.cpp Q4_K_M
# mixes of SmolLM2-135M, Qwen2.5-0.5B and Qwen2.5-1.5B, and the Q5_K_M mix of
# Qwen2.5-0.5B.
# Needs: a release build of metallic, assets/ (scripts/fetch-assets.sh) and the
# packages of scripts/reference/requirements.txt. Usage: synth_goldens.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${1:-python3}
bin=./target/release/metallic
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
out=crates/test-support/golden
tok=assets/qwen2/tokenizer.json
# 16 ids of ordinary Qwen2 tokens ("The quick brown fox ..." and a few more).
prompt=785,3974,13876,38835,34208,916,279,15678,5562,11,1053,1207,16948,594,220,17

for dt in F32 Q8_0; do
  f="$tmp/tiny_$dt.gguf"
  "$bin" synth --arch qwen2 --preset tiny --dtype "$dt" --tokenizer "$tok" --seed 1 -o "$f"
  "$py" scripts/reference/model_logits.py "$f" "$out/tiny_qwen2_${dt,,}_logits.json" \
    --prompt-ids "$prompt" --steps 8 --record-steps 8 --sample 512
done

f="$tmp/qwen25_05b_f16.gguf"
"$bin" synth --arch qwen2 --preset qwen2.5-0.5b --dtype F16 --tokenizer "$tok" --seed 1 -o "$f"
"$py" scripts/reference/model_logits.py "$f" "$out/qwen25_05b_f16_logits.json" \
  --prompt-ids "$prompt" --steps 2 --record-steps 2 --sample 512

# llama.cpp's Q4_K_M mix (Q5_0/Q8_0/Q4_K/Q6_K tensors, as llama-quantize gives
# these layouts), SmolLM2-135M (tokenizer from the SmolLM2 GGUF) and Qwen2.5-0.5B.
f="$tmp/smollm2_q4_k_m.gguf"
"$bin" synth --arch llama --preset smollm2-135m --dtype Q4_K_M \
  --tokenizer assets/SmolLM2-135M-Instruct.Q4_1.gguf --seed 1 -o "$f"
"$py" scripts/reference/model_logits.py "$f" "$out/smollm2_135m_q4_k_m_logits.json" \
  --prompt-ids "$prompt" --steps 4 --record-steps 4 --sample 512
f="$tmp/qwen25_05b_q4_k_m.gguf"
"$bin" synth --arch qwen2 --preset qwen2.5-0.5b --dtype Q4_K_M --tokenizer "$tok" --seed 1 -o "$f"
"$py" scripts/reference/model_logits.py "$f" "$out/qwen25_05b_q4_k_m_logits.json" \
  --prompt-ids "$prompt" --steps 2 --record-steps 2 --sample 512
# Q5_K_M of Qwen2.5-0.5B (Q5_1 where Q5_K's rows do not divide, Q6_K/Q8_0
# pieces) and Q4_K_M of Qwen2.5-1.5B (hidden 1536: the K-quants apply).
f="$tmp/qwen25_05b_q5_k_m.gguf"
"$bin" synth --arch qwen2 --preset qwen2.5-0.5b --dtype Q5_K_M --tokenizer "$tok" --seed 1 -o "$f"
"$py" scripts/reference/model_logits.py "$f" "$out/qwen25_05b_q5_k_m_logits.json" \
  --prompt-ids "$prompt" --steps 2 --record-steps 2 --sample 512
f="$tmp/qwen25_15b_q4_k_m.gguf"
"$bin" synth --arch qwen2 --preset qwen2.5-1.5b --dtype Q4_K_M --tokenizer "$tok" --seed 1 -o "$f"
"$py" scripts/reference/model_logits.py "$f" "$out/qwen25_15b_q4_k_m_logits.json" \
  --prompt-ids "$prompt" --steps 2 --record-steps 2 --sample 512
