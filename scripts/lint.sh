#!/usr/bin/env bash
# rustfmt and clippy (warnings are errors) on every workspace: the host crates (and rustdoc's
# warnings on them: broken links), the libos (for both hermit targets, as it is built), the
# example images, the host crates popvmm is built from and the board's test probe (for the
# board's target); rustfmt on the fuzz targets (built only by cargo-fuzz). Run by CI; needs
# the toolchain scripts/setup.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
lint_dir="$PWD/target/lint"

echo "== lint: host workspace"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

echo "== lint: libos"
(
    cd libos
    cargo fmt --all -- --check
    for arch in x86_64 aarch64; do
        cargo clippy --target "$arch-unknown-hermit" -Zbuild-std=core,alloc \
            --target-dir "$lint_dir" -- -D warnings
    done
    # The ABI crate's own tests run on the host.
    cargo clippy -p pop-abi --all-targets --target-dir "$lint_dir" -- -D warnings
)

echo "== lint: images"
(
    cd images
    cargo fmt --all -- --check
    cargo clippy --all-targets --target-dir "$lint_dir" -- -D warnings
)

echo "== lint: the host crates as built for the board (aarch64-unknown-linux-musl)"
board=(--target aarch64-unknown-linux-musl -Zbuild-std=std,panic_abort --target-dir "$lint_dir")
cargo clippy -p vmm -p pop-dsm -p pop-migrate -p popvmm --all-targets "${board[@]}" -- -D warnings
# (their test-only dependencies would need a C cross-compiler for the board)
cargo clippy -p net-msg -p pop-wire --lib "${board[@]}" -- -D warnings

echo "== lint: the board's test probe"
(
    cd edge-sim/tests/probe
    cargo fmt -- --check
    cargo clippy --target aarch64-unknown-linux-musl -Zbuild-std=std,panic_abort \
        --target-dir "$lint_dir" -- -D warnings
)

echo "== lint: fuzz targets (rustfmt)"
rustfmt --edition 2024 --check net-msg/fuzz/fuzz_targets/*.rs migrate/fuzz/fuzz_targets/*.rs
