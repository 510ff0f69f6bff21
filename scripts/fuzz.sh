#!/usr/bin/env bash
# Fuzzes every decoder of input from other nodes with cargo-fuzz (libFuzzer), for a bounded
# time per target: net-msg's frame decoder and handshake, and pop-migrate's messages (every
# message type's payload) and VM states.
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET]    (default 60)
#
# Installs cargo-fuzz on first use. Crashes are kept under */fuzz/artifacts/; the corpus grows
# under */fuzz/corpus/ (neither is committed). CI does not run this.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
bash scripts/setup.sh --no-board
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for spec in net-msg:frame_decoder net-msg:handshake migrate:messages migrate:vm_state; do
    crate=${spec%%:*}
    target=${spec#*:}
    echo "== fuzzing $crate $target for ${secs}s"
    (cd "$crate" && cargo fuzz run "$target" -- -max_total_time="$secs" -rss_limit_mb=2048)
done
echo "no crash found"
