#!/usr/bin/env bash
# The project's test command: fetch the test assets, then run every test.
# GPU tests skip with a message where no CUDA driver/GPU is present.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs) first" >&2; exit 1; }
./scripts/fetch-assets.sh
# The chat/TUI tests drive the binary inside tmux (a real terminal); they skip
# without it, so install it where apt-get can.
if ! command -v tmux >/dev/null; then
    if command -v apt-get >/dev/null; then
        SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
        $SUDO apt-get update -qq && $SUDO apt-get install -y -qq tmux >/dev/null \
            || echo "warning: could not install tmux; the terminal tests will skip" >&2
    else
        echo "warning: tmux not found and no apt-get; the terminal tests will skip" >&2
    fi
fi
cargo test --workspace --all-targets "$@"
