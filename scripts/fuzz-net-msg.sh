#!/usr/bin/env bash
# Fuzzes net-msg's frame decoder and handshake with cargo-fuzz (libFuzzer) for a bounded time.
#
#   bash scripts/fuzz-net-msg.sh [SECONDS_PER_TARGET]    (default 60)
#
# Installs cargo-fuzz on first use. Crashes are kept under net-msg/fuzz/artifacts/; the
# corpus grows under net-msg/fuzz/corpus/ (neither is committed). CI does not run this.
set -euo pipefail
cd "$(dirname "$0")/../net-msg"
secs=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for target in frame_decoder handshake; do
    echo "== fuzzing $target for ${secs}s"
    cargo fuzz run "$target" -- -max_total_time="$secs" -rss_limit_mb=2048
done
echo "no crash found"
