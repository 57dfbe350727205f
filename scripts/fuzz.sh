#!/usr/bin/env bash
# Fuzzes the payload decoder, the UDI parser and the line-protocol encoder for a bounded time each (default 120 s):
#   scripts/fuzz.sh [SECONDS] ["TARGETS"]
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP lets a stable toolchain provide them.
# Crashes land in fuzz/artifacts/<target>/; the corpus grows in fuzz/corpus/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-120}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz
targets=${2:-decode udi line}
for target in $targets; do
  echo "== fuzzing $target for ${seconds}s =="
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- -max_total_time="$seconds" -max_len=65536
done
