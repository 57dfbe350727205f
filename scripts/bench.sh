#!/usr/bin/env bash
# The load benchmark (docs/performance.md): builds release binaries, then runs penwarden-bench,
# which starts its own Mosquitto, InfluxDB 1.x and penwarden on free loopback ports and writes
# bench-results/results.json and results.md. Arguments pass through, e.g.
#   scripts/bench.sh --duration 60 --runs 3 --fleets 1000,10000 --rates 100000,300000,500000
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --workspace --bins
exec target/release/penwarden-bench "$@"
