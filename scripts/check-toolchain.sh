#!/usr/bin/env bash
# Says exactly what is missing when the Rust toolchain is absent or older than the workspace's
# rust-version (Cargo.toml). Called by scripts/test.sh and scripts/demo.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
need=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n1)
if ! command -v cargo >/dev/null 2>&1; then
  echo "check-toolchain: cargo not found; install Rust $need or newer (https://rustup.rs: rustup toolchain install stable)" >&2
  exit 1
fi
have=$(rustc --version | awk '{print $2}')
if [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -n1)" != "$need" ]; then
  echo "check-toolchain: rustc $have is older than the required $need; run 'rustup update stable'" >&2
  exit 1
fi
