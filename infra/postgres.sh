#!/usr/bin/env bash
# Local Postgres for the ledger: up | down | status.
# Uses a server already listening on 127.0.0.1:5432; otherwise installs Debian's
# `postgresql` if missing, starts its cluster, and lets loopback connections in without a
# password (local stack only) so the contract's default DATABASE_URL works. Then creates
# the database and runs `alembic upgrade head`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MARK="$ROOT/.data/postgres.started"
DATABASE_URL="${DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/pipeline}"
PORT=5432

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

install_if_missing() {
  if command -v pg_lsclusters >/dev/null && ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then return 0; fi
  echo "postgres: installing Debian's postgresql package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql >/dev/null
}

cluster() {  # "version name" of the first cluster, creating one if there is none
  local line
  line=$(pg_lsclusters -h 2>/dev/null | head -n1 || true)
  if [ -z "$line" ]; then
    local v; v=$(ls /usr/lib/postgresql | sort -V | tail -n1)
    pg_createcluster "$v" main >/dev/null
    line=$(pg_lsclusters -h | head -n1)
  fi
  echo "$line" | awk '{print $1" "$2}'
}

allow_loopback() {  # version name
  local hba="/etc/postgresql/$1/$2/pg_hba.conf"
  if ! grep -q "rollups-pipeline local stack" "$hba"; then
    # Prepended so it wins over Debian's scram-sha-256 lines for 127.0.0.1 and ::1.
    { echo "# rollups-pipeline local stack: loopback without password"
      echo "host all all 127.0.0.1/32 trust"
      echo "host all all ::1/128 trust"
      cat "$hba"; } > "$hba.new" && mv "$hba.new" "$hba"
    chown postgres:postgres "$hba" 2>/dev/null || true
    return 0
  fi
  return 1
}

up() {
  mkdir -p "$ROOT/.data"
  if ! port_open; then
    install_if_missing
    read -r ver name < <(cluster)
    allow_loopback "$ver" "$name" || true
    # Debian's package may already have started the cluster on install
    pg_ctlcluster "$ver" "$name" status >/dev/null 2>&1 || pg_ctlcluster "$ver" "$name" start
    touch "$MARK"
    local deadline=$((SECONDS + 60))
    until port_open; do
      [ $SECONDS -lt $deadline ] || { echo "postgres: not listening on 127.0.0.1:$PORT after 60s" >&2; exit 1; }
      sleep 0.5
    done
  fi
  # A local Debian cluster that asks loopback clients for a password (its default):
  # let them in, so the contract's default DATABASE_URL works.
  if ! can_connect && command -v pg_lsclusters >/dev/null && [ -n "$(pg_lsclusters -h 2>/dev/null)" ]; then
    read -r ver name < <(cluster)
    if allow_loopback "$ver" "$name"; then
      echo "postgres: allowing loopback connections without password (local stack)"
      pg_ctlcluster "$ver" "$name" reload
      sleep 1
    fi
  fi
  create_database
  (cd "$ROOT" && DATABASE_URL="$DATABASE_URL" python3 -m alembic -c "$ROOT/alembic.ini" upgrade head 2>&1 \
     | grep -v "^INFO  \[alembic.runtime.migration\] \(Context impl\|Will assume\)" || true)
  (cd "$ROOT" && DATABASE_URL="$DATABASE_URL" python3 -m alembic -c "$ROOT/alembic.ini" current 2>/dev/null | grep -q "(head)") \
    || { echo "postgres: alembic upgrade head failed" >&2; exit 1; }
  echo "postgres: up at 127.0.0.1:$PORT, ledger migrated"
}

can_connect() {  # as DATABASE_URL says, to the maintenance database
  python3 - "$DATABASE_URL" <<'PY' 2>/dev/null
import sys
from urllib.parse import urlsplit, urlunsplit
import psycopg
parts = urlsplit(sys.argv[1].replace("postgresql+psycopg://", "postgresql://"))
try:
    psycopg.connect(urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, "")), connect_timeout=3).close()
except psycopg.OperationalError:
    sys.exit(1)
PY
}

create_database() {
  python3 - "$DATABASE_URL" <<'PY'
import sys, time
import psycopg
from psycopg import sql
from urllib.parse import urlsplit, urlunsplit
url = sys.argv[1].replace("postgresql+psycopg://", "postgresql://")
parts = urlsplit(url)
db = parts.path.lstrip("/") or "postgres"
admin = urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, ""))
for attempt in range(30):
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
                print(f"postgres: created database {db}")
        break
    except psycopg.OperationalError as e:
        if attempt == 29:
            sys.exit(f"postgres: cannot connect as given by DATABASE_URL: {str(e).strip().splitlines()[0]}")
        time.sleep(1)
PY
}

down() {
  if [ -f "$MARK" ]; then
    read -r ver name < <(cluster)
    pg_ctlcluster "$ver" "$name" stop || true
    rm -f "$MARK"
    echo "postgres: stopped"
  else
    echo "postgres: left running (not started by this stack)"
  fi
}

status() {
  if port_open; then echo "postgres: up at 127.0.0.1:$PORT"; else echo "postgres: down"; fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
