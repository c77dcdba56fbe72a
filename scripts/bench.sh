#!/usr/bin/env bash
# Memory and rate benchmark of a multipart upload (not a test): scripts/bench.sh [GiB, default 4].
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/dev-services.sh
# shellcheck disable=SC1091
. .dev/env
exec cargo run --quiet --locked --example upload_memory -- "${1:-4}"
