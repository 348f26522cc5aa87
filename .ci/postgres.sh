#!/usr/bin/env bash
# Start (or stop) a throw-away PostgreSQL server on loopback for the test suite.
#   source .ci/postgres.sh start   -> exports OAI_TEST_POSTGRES_URL, PG_TMP
#   .ci/postgres.sh stop DIR
# Installs Debian's postgresql when no server binaries are found. The server runs as the
# `postgres` user (PostgreSQL refuses to run as root), with its own data folder and port.
set -euo pipefail

pg_bindir() {
  local d
  for d in "$(pg_config --bindir 2>/dev/null || true)" /usr/lib/postgresql/*/bin; do
    [[ -n "$d" && -x "$d/initdb" && -x "$d/pg_ctl" ]] && { echo "$d"; return 0; }
  done
  return 1
}

as_pg() {
  if [[ $(id -u) -eq 0 ]]; then su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi
}

start() {
  local bindir
  if ! bindir=$(pg_bindir); then
    echo "postgres: installing Debian's postgresql" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2
    bindir=$(pg_bindir)
  fi
  if [[ $(id -u) -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
    useradd --system --no-create-home postgres
  fi
  PG_TMP=$(mktemp -d /tmp/oai-pg.XXXXXX)
  chmod 755 "$PG_TMP"
  [[ $(id -u) -eq 0 ]] && chown postgres "$PG_TMP"
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  as_pg "'$bindir/initdb' -D '$PG_TMP/data' -U oai --auth=trust -E UTF8 >'$PG_TMP/initdb.log' 2>&1"
  as_pg "'$bindir/pg_ctl' -D '$PG_TMP/data' -o \"-p $port -k $PG_TMP -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200\" -l '$PG_TMP/server.log' -w start >/dev/null"
  export PG_TMP PG_BINDIR="$bindir"
  export OAI_TEST_POSTGRES_URL="postgresql+psycopg://oai@127.0.0.1:$port/postgres"
  echo "postgres: test server on 127.0.0.1:$port ($PG_TMP)" >&2
}

stop() {
  local dir=${1:-${PG_TMP:-}} bindir
  [[ -n "$dir" && -d "$dir/data" ]] || return 0
  bindir=$(pg_bindir) || return 0
  as_pg "'$bindir/pg_ctl' -D '$dir/data' -m immediate stop >/dev/null 2>&1" || true
  rm -rf "$dir"
}

case "${1:-}" in
  start) start ;;
  stop) stop "${2:-}" ;;
  *) echo "usage: $0 start|stop [DIR]" >&2; return 2 2>/dev/null || exit 2 ;;
esac
