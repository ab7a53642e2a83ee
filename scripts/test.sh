#!/usr/bin/env bash
# The project's test command: fetch the test assets, then run every test.
# GPU tests skip with a message where no CUDA driver/GPU is present.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs) first" >&2; exit 1; }
./scripts/fetch-assets.sh
# The openai client for the server tests; they must not skip here.
./scripts/setup-test-venv.sh
export METALLIC_REQUIRE_OPENAI_TESTS=1
cargo test --workspace --all-targets "$@"
