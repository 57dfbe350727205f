#!/usr/bin/env bash
# The whole test suite: unit, property and end-to-end tests (the e2e tests spawn the
# penwarden and pensim binaries, so they are built first).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --workspace --bins
cargo test --workspace
