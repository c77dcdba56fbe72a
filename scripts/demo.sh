#!/usr/bin/env bash
# The main job, end to end: brings up Postgres, Redis and moto_server, then runs the reference
# host's demo (migrate, register a mount, put / stat / list / delete / copy / move, show nodes rows
# and the Redis events). Point it at another store with FILESTORE_DEMO_ENDPOINT and AWS_* variables.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/check-toolchain.sh
scripts/dev-services.sh
# shellcheck disable=SC1091
. .dev/env
# moto accepts any credentials; a real store needs real ones in the environment.
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-filestore-demo}
export AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-filestore-demo}
export AWS_REGION=${AWS_REGION:-us-east-1}
export FILESTORE_DEMO_ENDPOINT=${FILESTORE_DEMO_ENDPOINT:-$FILESTORE_TEST_MOTO_ENDPOINT}
export FILESTORE_DB_SCHEMA=${FILESTORE_DB_SCHEMA:-filestore_demo}
exec cargo run --quiet --locked -- demo "$@"
