#!/usr/bin/env bash
# Makes the services filestore-s3's tests and demo need available on loopback, on any Debian-like
# machine: uses what is already running, starts what is installed, installs what is missing.
# Writes the addresses to .dev/env (source it) and prints them.
#
#   Postgres  FILESTORE_DATABASE_URL       (default postgres://postgres@127.0.0.1:5432/postgres)
#   Redis     FILESTORE_REDIS_URL          (default redis://127.0.0.1:6379)
#   moto      FILESTORE_TEST_MOTO_ENDPOINT (default http://127.0.0.1:5055)
#   s3s-fs    runs in-process inside the tests; nothing to start.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$root/.dev"
log() { printf 'dev-services: %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    apt_updated=1
  fi
  log "apt-get install $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 60); do port_open "$1" "$2" && return 0; sleep 0.5; done
  return 1
}

# ---------------------------------------------------------------- Postgres
pg_url=${FILESTORE_DATABASE_URL:-}
pg_ok() { command -v psql >/dev/null && psql "$1" -Atqc 'select 1' >/dev/null 2>&1; }
if [ -z "$pg_url" ]; then
  default_url=postgres://postgres@127.0.0.1:5432/postgres
  if ! port_open 127.0.0.1 5432; then
    if ! command -v pg_ctlcluster >/dev/null || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
      apt_install postgresql postgresql-client
    fi
    version=$(ls /etc/postgresql | sort -V | tail -n1)
    log "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || as_root pg_ctlcluster "$version" main start >&2
    wait_port 127.0.0.1 5432 || { log "PostgreSQL did not open 127.0.0.1:5432"; exit 1; }
  fi
  if pg_ok "$default_url"; then
    pg_url=$default_url
  else
    # A stock install: password auth on TCP. Create a role of our own through the local socket.
    log "creating role 'filestore' for TCP access"
    as_root su postgres -c "psql -v ON_ERROR_STOP=1 -qc \"DO \\\$\\\$BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'filestore') THEN
          CREATE ROLE filestore LOGIN SUPERUSER PASSWORD 'filestore';
        END IF; END\\\$\\\$\"" >&2
    pg_url=postgres://filestore:filestore@127.0.0.1:5432/postgres
  fi
fi
pg_ok "$pg_url" || { log "cannot connect to Postgres at $pg_url"; exit 1; }
# The F5 test restarts a Postgres cluster of its own (initdb + pg_ctl on a free loopback port).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null \
   && [ -z "${FILESTORE_TEST_PG_BINDIR:-}" ]; then
  apt_install postgresql
fi
command -v runuser >/dev/null || [ "$(id -u)" != 0 ] || apt_install util-linux

# ---------------------------------------------------------------- Redis
redis_url=${FILESTORE_REDIS_URL:-redis://127.0.0.1:6379}
if [ -z "${FILESTORE_REDIS_URL:-}" ] && ! port_open 127.0.0.1 6379; then
  command -v redis-server >/dev/null || apt_install redis-server
  log "starting redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "$root/.dev" --logfile "$root/.dev/redis.log" >&2
  wait_port 127.0.0.1 6379 || { log "Redis did not open 127.0.0.1:6379"; exit 1; }
fi
# The feed test restarts a Redis of its own (redis-server on a free loopback port).
command -v redis-server >/dev/null || apt_install redis-server

# ---------------------------------------------------------------- moto_server
# Pinned: moto 5.2.1 answers CompleteMultipartUpload with a root element the AWS SDK rejects;
# 5.2.5 fixes that (its ListParts root is still off, see docs/filestore.md).
moto_version=5.2.5
moto=${FILESTORE_TEST_MOTO_ENDPOINT:-http://127.0.0.1:5055}
# An open port is not enough: a moto_server started from a checkout that was removed since (its
# venv with it) still listens but answers 500 to everything. Ours is stopped and started again.
moto_answers() {
  python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/", timeout=10)' \
    "$moto" >/dev/null 2>&1
}
if [ -z "${FILESTORE_TEST_MOTO_ENDPOINT:-}" ] && port_open 127.0.0.1 5055 && ! moto_answers; then
  stale=$(pgrep -f 'moto_server -H 127.0.0.1 -p 5055' || true)
  if [ -n "$stale" ]; then
    log "moto_server on 127.0.0.1:5055 answers with errors: stopping it (pid $stale) to start it again"
    kill $stale 2>/dev/null || true
    for _ in $(seq 1 20); do port_open 127.0.0.1 5055 || break; sleep 0.5; done
  else
    log "something on 127.0.0.1:5055 answers with errors and is not a moto_server started here"
    exit 1
  fi
fi
if [ -z "${FILESTORE_TEST_MOTO_ENDPOINT:-}" ] && ! port_open 127.0.0.1 5055; then
  venv="$root/.dev/moto-venv"
  if ! "$venv/bin/moto_server" --help >/dev/null 2>&1 \
     || [ "$("$venv/bin/python" -c 'import moto; print(moto.__version__)' 2>/dev/null)" != "$moto_version" ]; then
    command -v python3 >/dev/null || apt_install python3
    python3 -m venv "$venv" >&2 2>/dev/null || { apt_install python3-venv; python3 -m venv "$venv" >&2; }
    log "pip install moto[server]==$moto_version into .dev/moto-venv"
    "$venv/bin/pip" install -q "moto[server]==$moto_version" >&2
  fi
  log "starting moto_server $moto_version on 127.0.0.1:5055"
  nohup "$venv/bin/moto_server" -H 127.0.0.1 -p 5055 >"$root/.dev/moto.log" 2>&1 &
  wait_port 127.0.0.1 5055 || { log "moto_server did not open 127.0.0.1:5055 (see .dev/moto.log)"; exit 1; }
fi

cat >"$root/.dev/env" <<ENV
export FILESTORE_DATABASE_URL='$pg_url'
export FILESTORE_REDIS_URL='$redis_url'
export FILESTORE_TEST_MOTO_ENDPOINT='$moto'
ENV
log "Postgres  $pg_url"
log "Redis     $redis_url"
log "moto      $moto"
log "s3s-fs    in-process in the tests (crate s3s-fs 0.14.1)"
log "written to .dev/env"
