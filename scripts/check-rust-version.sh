#!/usr/bin/env bash
# Fails when a locked dependency needs a newer Rust than the workspace declares
# (`rust-version` in Cargo.toml) or than the Dockerfile builds with: users who build with the
# declared version would meet the error instead.
set -euo pipefail
cd "$(dirname "$0")/.."
declared=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
docker_image=$(sed -n 's/^FROM rust:\([0-9.]*\)-.*/\1/p' Dockerfile)
cargo metadata --format-version 1 --locked --filter-platform x86_64-unknown-linux-gnu |
  python3 -c '
import json, sys
declared, docker_image = sys.argv[1], sys.argv[2]
# "1.88" and "1.88.0" are one version: compare three parts.
version = lambda text: tuple(int(part) for part in (text.split(".") + ["0", "0"])[:3])
dotted = lambda parts: ".".join(map(str, parts))
metadata = json.load(sys.stdin)
resolved = {node["id"] for node in metadata["resolve"]["nodes"]}
needs = sorted(
    (version(p["rust_version"]), p["name"], p["version"])
    for p in metadata["packages"]
    if p.get("rust_version") and p["id"] in resolved
)
newest = needs[-1]
print(f"declared rust-version {declared}, Dockerfile rust:{docker_image}; the most demanding locked dependency: "
      f"{newest[1]} {newest[2]} needs {dotted(newest[0])}")
too_new = [n for n in needs if n[0] > version(declared)]
if too_new:
    sys.exit("these need a newer Rust than rust-version " + declared + ": "
             + ", ".join(f"{name} {v} ({dotted(rv)})" for rv, name, v in too_new))
if version(docker_image) != version(declared):
    sys.exit(f"the Dockerfile builds with rust:{docker_image}, the workspace declares {declared}")
' "$declared" "$docker_image"
