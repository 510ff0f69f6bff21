#!/usr/bin/env bash
# The test suite, on a fresh machine: installs what the tests need (scripts/setup.sh), then runs
# `cargo test --workspace` with any extra arguments passed on.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec cargo test --workspace "$@"
