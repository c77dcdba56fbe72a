#!/usr/bin/env bash
# Supply-chain check: `cargo audit` of Cargo.lock against the RustSec advisory database. Uses a
# local snapshot with --no-fetch when there is one (FILESTORE_ADVISORY_DB, or the `shared/advisory-db`
# beside this checkout or beside the repository it was cloned from), the live database otherwise.
# Installs cargo-audit when it is missing. Fails on any vulnerability and on any unmaintained /
# unsound / yanked warning, except the ones listed in audit.toml with their reasons.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo audit --version >/dev/null 2>&1; then
  # A debug build compiles in about half the time of a release build on two cores, and an audit
  # of one lock file is quick either way.
  echo "cargo-audit is missing: installing it (cargo install cargo-audit --locked --debug)"
  cargo install cargo-audit --locked --debug
fi

db="${FILESTORE_ADVISORY_DB:-}"
if [ -z "$db" ]; then
  candidates=("$PWD/../shared/advisory-db")
  origin="$(git remote get-url origin 2>/dev/null || true)"
  if [ -n "$origin" ] && [ -d "$origin" ]; then
    candidates+=("$origin/../shared/advisory-db")
  fi
  for c in "${candidates[@]}"; do
    if [ -d "$c/crates" ]; then
      db="$c"
      break
    fi
  done
fi

# Warnings (unmaintained, unsound, yanked) fail the check too.
args=(audit --deny warnings)
if [ -n "$db" ]; then
  echo "advisory database: $db (snapshot, --no-fetch)"
  args+=(--db "$db" --no-fetch)
else
  echo "advisory database: the live RustSec database (fetched)"
fi
cargo "${args[@]}"
