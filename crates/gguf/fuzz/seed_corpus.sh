#!/usr/bin/env bash
# Seeds the fuzz corpora (git-ignored) from real and synthetic GGUFs:
#   crates/gguf/fuzz/corpus/reader: synthetic files from examples/synth_gguf.rs, the committed
#     reference GGUFs, and prefixes of the SmolLM2 asset (a truncated real file is valid seed
#     material; its first 1.78 MB are metadata, so short prefixes end inside the vocabulary).
#   crates/gguf/fuzz/corpus/quant: raw f32 and block bytes.
#   crates/gguf/fuzz/corpus/config: the reader's seeds (valid models are what it needs).
#   crates/gguf/fuzz/corpus/template: the built-in chat templates and small hostile ones.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../../.." && pwd)
reader="$here/corpus/reader"
quant="$here/corpus/quant"
mkdir -p "$reader" "$quant"

(cd "$top" && cargo run -q -p metallic-gguf --example synth_gguf -- "$reader")
cp "$top"/crates/gguf/tests/data/*.gguf "$reader/"
smol="$top/assets/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -s "$smol" ]; then
  for n in 1024 4096 65536 300000; do
    head -c "$n" "$smol" > "$reader/smollm2_head_$n.gguf"
  done
else
  echo "note: $smol missing (scripts/fetch-assets.sh); seeding without it" >&2
fi

head -c 4096 "$top/crates/gguf/tests/data/quant_vectors.gguf" > "$quant/vectors_head"
for f in "$reader"/minimal.gguf "$reader"/all_types.gguf; do
  cp "$f" "$quant/$(basename "$f").bin"
done
config="$here/corpus/config"
template="$here/corpus/template"
mkdir -p "$config" "$template"
cp "$reader"/* "$config/"
for f in "$top"/crates/core/src/chat/templates/*.jinja; do
  cp "$f" "$template/$(basename "$f")"
done
printf '%s' "{% for i in range(10) %}{{ i ~ messages[0].content }}{% endfor %}" > "$template/loop"
printf '%s\0%s' "{{ messages[1].content|tojson }}{{ 'x' * 3 }}" "<|im_end|>" > "$template/tojson"
ls -l "$reader" "$quant" "$template" >&2
