#!/usr/bin/env bash
# Start a throw-away PostgreSQL server for the multi-worker tests, on a local port, and print
# its SQLAlchemy URL. Idempotent: installs the Debian package if missing, reuses a running one.
# Usage: eval "$(scripts/start-postgres.sh)"   # exports SWEETSPOT_TEST_POSTGRES_URL
set -euo pipefail
PORT="${SWEETSPOT_PG_PORT:-55432}"
DATA="${SWEETSPOT_PG_DATA:-/tmp/sweetspot-postgres}"

find_bin() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && { echo "$dir"; return 0; }
  done
  return 1
}

if ! BIN="$(find_bin)"; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql) >&2
  else
    echo "PostgreSQL is not installed and this user cannot install it" >&2; exit 1
  fi
  BIN="$(find_bin)"
fi

# The server refuses to run as root: use the postgres system user when we are root.
run() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
id postgres >/dev/null 2>&1 || useradd --system --home /var/lib/postgresql postgres

if ! run "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
  if [ ! -f "$DATA/PG_VERSION" ]; then
    mkdir -p "$DATA"; [ "$(id -u)" = 0 ] && chown postgres "$DATA"
    run "$BIN/initdb" -D "$DATA" -U postgres --auth=trust >/dev/null
  fi
  run "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w \
      -o "-p $PORT -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >&2
fi
run "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='sweetspot_test'" | grep -q 1 \
  || run "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres sweetspot_test
echo "export SWEETSPOT_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:$PORT/sweetspot_test"
