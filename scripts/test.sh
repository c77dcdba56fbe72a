#!/usr/bin/env bash
# Runs every check and test of filestore-s3: formatting, clippy, unit and actor tests, and the
# end-to-end suites against real Postgres, Redis, s3s-fs (in-process) and moto_server.
# Brings the services up first (scripts/dev-services.sh). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
# Each step's heading says how long the run has taken so far, so a slow step shows in CI's log.
step() { echo "== [$((SECONDS - started)) s] $*"; }

step "toolchain and services"
scripts/check-toolchain.sh
scripts/dev-services.sh
# shellcheck disable=SC1091
. .dev/env

for c in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
done

step "cargo fmt --check"
cargo fmt --all -- --check
# The crash tests stop the reference binary at failpoints, which exist only with this feature.
features=(--features filestore-s3/failpoints)
step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo clippy -D warnings, with the failpoints feature"
cargo clippy --workspace --all-targets --locked "${features[@]}" -- -D warnings
step "import circles among the modules (actors and root crate)"
if [ -x ../shared/tools/import-circles ]; then
  ../shared/tools/import-circles actors/src
  ../shared/tools/import-circles src
fi
step "supply chain: cargo audit (RustSec advisories)"
scripts/audit.sh
# Every target in one build with one feature set, the benchmark's binary included: `cargo run -p`
# of the benchmark alone would resolve other features for the shared dependencies and build many
# of them again (minutes on two cores).
step "build every target"
cargo build --workspace --all-targets --locked "${features[@]}"
step "cargo test"
cargo test --workspace --locked "${features[@]}" "$@"
step "the external-endpoint suite against moto and a standalone s3s-fs (scripts/test-external-local.sh)"
scripts/test-external-local.sh
step "benchmark smoke run (tiny sizes; the real run is scripts/bench.sh, docs/benchmarks.md)"
"${CARGO_TARGET_DIR:-target}/debug/filestore-s3-bench" run --smoke --repeat 2 \
  --out "${CARGO_TARGET_DIR:-target}/bench/smoke.json"
step "done"
