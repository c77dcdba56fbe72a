#!/usr/bin/env bash
# Runs every check and test of filestore-s3: formatting, clippy, unit and actor tests, and the
# end-to-end suites against real Postgres, Redis, s3s-fs (in-process) and moto_server.
# Brings the services up first (scripts/dev-services.sh). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/check-toolchain.sh
scripts/dev-services.sh
# shellcheck disable=SC1091
. .dev/env

for c in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
done

echo "== cargo fmt --check"
cargo fmt --all -- --check
# The crash tests stop the reference binary at failpoints, which exist only with this feature.
features=(--features filestore-s3/failpoints)
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy --workspace --all-targets --locked "${features[@]}" -- -D warnings
echo "== import circles among the modules (actors and root crate)"
if [ -x ../shared/tools/import-circles ]; then
  ../shared/tools/import-circles actors/src
  ../shared/tools/import-circles src
fi
echo "== supply chain: cargo audit (RustSec advisories)"
scripts/audit.sh
echo "== cargo test"
cargo test --workspace --locked "${features[@]}" "$@"
echo "== benchmark smoke run (tiny sizes; the real run is scripts/bench.sh, docs/benchmarks.md)"
cargo run --locked -q -p filestore-s3-bench -- run --smoke --repeat 2 --out target/bench/smoke.json
