#!/usr/bin/env bash
# The main demo, on a fresh machine: installs the pinned toolchain, builds popvmm and
# cargo-pop, builds the example apps as unikernel images, and runs them on KVM.
set -euo pipefail
cd "$(dirname "$0")/.."

# The pinned toolchain, and a check of /dev/kvm (the demo needs no aarch64 board).
bash scripts/setup.sh --no-board

echo "== building popvmm and cargo-pop"
cargo build --release -p popvmm -p pop-toolchain
export PATH="$PWD/target/release:$PATH"

echo "== cargo pop build (the apps' sources and Cargo.toml are unmodified std code)"
(cd images && cargo pop build --release) | tee /tmp/pop-demo-images.txt
img() { grep "/$1\$" /tmp/pop-demo-images.txt; }

echo "== popvmm launch hello"
popvmm launch --timings "$(img hello)"

echo "== popvmm launch primesum (4 threads = 4 vCPUs)"
popvmm launch "$(img primesum)"

echo "== popvmm launch stdtour with a read-write mount"
dir=$(mktemp -d)
popvmm launch --mount "$dir:/data:rw" --env POP_TOUR=demo "$(img stdtour)" -- /data
rm -rf "$dir"

echo "== a guest fault: NULL dereference"
popvmm launch "$(img checks)" -- null || echo "(exit status $?)"
