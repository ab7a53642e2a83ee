#!/usr/bin/env bash
# Cross-compile the CPU backend for aarch64 Linux and run its kernel tests and
# the SmolLM2 parity test under qemu-user: the NEON kernels (with and without
# the dot-product extension) checked on an x86 machine.
#
# Installs what it needs, idempotently: the rustup target, Debian's
# gcc-aarch64-linux-gnu (linker, arm64 libc) and qemu-user. Where that is
# impossible (not root, no apt-get, no rustup) it says so loudly and skips.
# METALLIC_SKIP_AARCH64=1 skips on purpose. Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=aarch64-unknown-linux-gnu
skip() {
    echo "" >&2
    echo "!!! SKIPPING the aarch64 (qemu) tests: $* !!!" >&2
    echo "" >&2
    exit 0
}
[ "${METALLIC_SKIP_AARCH64:-}" = 1 ] && skip "METALLIC_SKIP_AARCH64=1"

need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
if [ ${#need[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null; then
        skip "no apt-get to install ${need[*]}; install them by hand"
    fi
    SUDO=()
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
            SUDO=(sudo -n)
        else
            skip "installing ${need[*]} needs root"
        fi
    fi
    echo "installing ${need[*]}" >&2
    "${SUDO[@]}" apt-get update -qq || skip "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
        || skip "apt-get could not install ${need[*]}"
fi
if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
    command -v rustup >/dev/null || skip "no rustup to add the $TARGET target"
    rustup target add "$TARGET" || skip "rustup could not add $TARGET"
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
SYSROOT=/usr/aarch64-linux-gnu
start=$SECONDS
# qemu's default CPU ("max") has the dot-product extension: every level runs.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L $SYSROOT"
cargo test -p metallic-cpu --target "$TARGET" --lib --test parity_smollm2 "$@"
# A Cortex-A72 has no dot product: the plain NEON kernels are the default there.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu cortex-a72 -L $SYSROOT"
cargo test -p metallic-cpu --target "$TARGET" --lib "$@"
echo "aarch64 tests under qemu: $((SECONDS - start)) s" >&2
