#!/usr/bin/env bash
# Installs what building, testing and the demo need on a fresh machine that has only rustup,
# gcc and python: the nightly pinned in rust-toolchain.toml (with rust-src, rustfmt, clippy),
# and, unless given --no-board, QEMU for aarch64 plus apt's arm64 package lists (edge-sim fetches
# the board's kernel, busybox and the musl runtime itself with `apt-get download`). Checks that
# /dev/kvm is usable. Idempotent, and fast when everything is there. Installing packages needs
# root; without root it says what to install.
set -euo pipefail
cd "$(dirname "$0")/.."

board=1
[ "${1:-}" = "--no-board" ] && board=0

channel=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
if ! rustup run "$channel" rustc --version >/dev/null 2>&1 \
    || ! rustup component list --toolchain "$channel" --installed 2>/dev/null | grep -q '^rust-src'; then
    echo "setup: installing the Rust toolchain $channel (rustup)"
    rustup toolchain install "$channel" --profile minimal -c rust-src -c rustfmt -c clippy
fi

if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
    echo "setup: /dev/kvm is missing or not readable and writable by $(id -un)" >&2
    exit 1
fi

[ "$board" = 1 ] || exit 0
need_qemu=0
command -v qemu-system-aarch64 >/dev/null || need_qemu=1
need_arch=0
dpkg --print-foreign-architectures | grep -qx arm64 || need_arch=1
if [ "$need_qemu$need_arch" != 00 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "setup: as root, run: dpkg --add-architecture arm64 && apt-get update &&" \
            "apt-get install --no-install-recommends qemu-system-arm" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if [ "$need_arch" = 1 ]; then
        echo "setup: dpkg --add-architecture arm64"
        dpkg --add-architecture arm64
    fi
    echo "setup: apt-get update"
    apt-get update -q >/dev/null
    if [ "$need_qemu" = 1 ]; then
        # The board needs no firmware or option ROM (the kernel is loaded directly, the NIC has
        # romfile= off), so the recommended packages are not needed.
        echo "setup: installing qemu-system-arm (apt-get)"
        apt-get install -y -q --no-install-recommends qemu-system-arm >/dev/null
    fi
fi
