#!/usr/bin/env bash
# Local Postgres for the ledger: up | down | status (docs/operations.md, "The local stack").
#
# The server is the one DATABASE_URL names (default postgresql://postgres@127.0.0.1:5432/pipeline).
# - A server already listening there is used as it is: its pg_hba.conf is never edited. If it
#   refuses DATABASE_URL, the script says which DATABASE_URL to set and stops.
# - Otherwise the Debian cluster configured for that port is started (installing Debian's
#   `postgresql` first, or creating a cluster, when there is none). A cluster this script
#   starts (or created, or whose package it installed) is the stack's while it runs: at the top
#   of its pg_hba.conf it gets loopback `trust` lines scoped to the ledger's database (and the
#   maintenance database `postgres`, to create it) and role, between marker comments. `down`
#   stops what `up` started and removes those lines, leaving the file as it was.
# Then the database is created if missing and `alembic upgrade head` run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
[ -x "$PY" ] || command -v "$PY" >/dev/null || PY=python3  # before `make install`: status still works
DATABASE_URL="${DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/pipeline}"
STATE="${POSTGRES_STATE_DIR:-$ROOT/.data}"
BEGIN="# >>> rollups-pipeline local stack (infra/postgres.sh; removed by make down)"
END="# <<< rollups-pipeline local stack"
OWNED_FILE="rollups-pipeline.owned"   # in a cluster's config directory: the stack created it

# host, port, database and role of DATABASE_URL (standard library only: `status` runs before `make install`)
read -r HOST PORT DB ROLE < <("$PY" - "$DATABASE_URL" <<'PY'
import re, sys
from urllib.parse import parse_qs, unquote, urlsplit
url = sys.argv[1].replace("postgresql+psycopg://", "postgresql://")
if "://" in url:
    u = urlsplit(url)
    q = {k: v[-1] for k, v in parse_qs(u.query).items()}
    d = {"host": u.hostname, "port": u.port, "dbname": unquote(u.path.lstrip("/")) or None, "user": u.username}
    d = {k: q.get(k, v) for k, v in d.items()}
else:  # keyword DSN: host=... port=... dbname=... user=...
    d = dict(re.findall(r"(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", url))
print(d.get("host") or "127.0.0.1", d.get("port") or "5432", d.get("dbname") or "pipeline", d.get("user") or "postgres")
PY
)
MARK="$STATE/postgres.started.$PORT"   # this stack started the cluster on PORT: `down` stops it

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }
local_host() { [[ "$HOST" == 127.0.0.1 || "$HOST" == localhost || "$HOST" == ::1 ]]; }

install_if_missing() {
  if command -v pg_lsclusters >/dev/null && ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then return 1; fi
  echo "postgres: installing Debian's postgresql package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql >/dev/null
}

cluster_on_port() {  # "version name" of the cluster configured for PORT, if any
  pg_lsclusters -h 2>/dev/null | awk -v port="$PORT" '$3 == port {print $1" "$2; exit}'
}

conf_dir() { echo "/etc/postgresql/$1/$2"; }
owned() { [ -f "$(conf_dir "$1" "$2")/$OWNED_FILE" ]; }

scope_hba() {  # version name: our trust lines at the top, replacing earlier ones
  local hba; hba="$(conf_dir "$1" "$2")/pg_hba.conf"
  unscope_hba "$1" "$2"
  { echo "$BEGIN"
    echo "host    $DB,postgres    $ROLE    127.0.0.1/32    trust"
    echo "host    $DB,postgres    $ROLE    ::1/128         trust"
    echo "$END"
    cat "$hba"; } > "$hba.new"
  chown --reference="$hba" "$hba.new" 2>/dev/null || true
  chmod --reference="$hba" "$hba.new" 2>/dev/null || true
  mv "$hba.new" "$hba"
}

unscope_hba() {  # version name: remove our lines, nothing else
  local hba; hba="$(conf_dir "$1" "$2")/pg_hba.conf"
  grep -qF "$BEGIN" "$hba" || return 0
  awk -v b="$BEGIN" -v e="$END" '$0 == b {skip = 1; next} $0 == e {skip = 0; next} !skip' "$hba" > "$hba.new"
  chown --reference="$hba" "$hba.new" 2>/dev/null || true
  chmod --reference="$hba" "$hba.new" 2>/dev/null || true
  mv "$hba.new" "$hba"
}

can_connect() {  # as DATABASE_URL says, to the maintenance database
  "$PY" - "$DATABASE_URL" <<'PY' 2>/dev/null
import sys
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
d = conninfo_to_dict(sys.argv[1].replace("postgresql+psycopg://", "postgresql://"))
d["dbname"] = "postgres"
try:
    psycopg.connect(make_conninfo(**d), connect_timeout=3).close()
except psycopg.OperationalError:
    sys.exit(1)
PY
}

refused() {
  echo "postgres: the server on port $PORT refuses DATABASE_URL ($(mask "$DATABASE_URL"))." >&2
  echo "postgres: it was not started by this stack, so its pg_hba.conf is left as it is. Set DATABASE_URL" >&2
  echo "postgres: to a role it accepts, e.g. (as its superuser: CREATE ROLE pipeline LOGIN PASSWORD '...' CREATEDB):" >&2
  echo "  export DATABASE_URL='postgresql://pipeline:PASSWORD@127.0.0.1:$PORT/$DB'" >&2
  exit 1
}

mask() { (cd "$ROOT" && "$PY" -c 'import sys; from app.core.urls import mask_url; print(mask_url(sys.argv[1]))' "$1") \
  2>/dev/null || echo "<DATABASE_URL>"; }

wait_port() {
  local deadline=$((SECONDS + 60))
  until port_open; do
    [ $SECONDS -lt $deadline ] || { echo "postgres: not listening on 127.0.0.1:$PORT after 60s" >&2; exit 1; }
    sleep 0.5
  done
}

start_local() {  # nothing listens on PORT: start (or create) the Debian cluster for it
  local installed=0 ver name
  install_if_missing && installed=1
  read -r ver name < <(cluster_on_port) || true
  if [ -z "${ver:-}" ]; then
    ver=$(ls /usr/lib/postgresql | sort -V | tail -n1)
    name="rollups$PORT"
    echo "postgres: creating cluster $ver/$name on port $PORT"
    pg_createcluster "$ver" "$name" -p "$PORT" >/dev/null
    touch "$(conf_dir "$ver" "$name")/$OWNED_FILE"
  elif [ "$installed" = 1 ]; then  # created by the package this script installed just now
    touch "$(conf_dir "$ver" "$name")/$OWNED_FILE"
  fi
  # Debian's package may already have started the cluster on install
  if ! pg_ctlcluster "$ver" "$name" status >/dev/null 2>&1; then
    # the stack starts it, so while it runs it is the stack's: scoped lines now, removed by `down`
    # (a stock machine ships a stopped 15/main on 5432; without them the default URL is refused)
    scope_hba "$ver" "$name"
    mkdir -p "$STATE"; echo "$ver $name" > "$MARK"
    pg_ctlcluster "$ver" "$name" start || { unscope_hba "$ver" "$name"; rm -f "$MARK"; exit 1; }
  elif owned "$ver" "$name"; then
    scope_hba "$ver" "$name"
    pg_ctlcluster "$ver" "$name" reload
  fi
  wait_port
}

up() {
  if ! local_host; then
    echo "postgres: DATABASE_URL points at $HOST: not a local server, nothing to start"
  elif ! port_open; then
    start_local
  fi
  local tries=0
  until can_connect; do  # a server just started may refuse for a moment
    tries=$((tries + 1))
    [ $tries -lt 10 ] || refused
    sleep 0.5
  done
  create_database
  (cd "$ROOT" && DATABASE_URL="$DATABASE_URL" LOG_LEVEL=warning "$PY" -m alembic -c "$ROOT/alembic.ini" upgrade head) \
    || { echo "postgres: alembic upgrade head failed" >&2; exit 1; }
  echo "postgres: up at $HOST:$PORT, database $DB migrated"
}

create_database() {
  "$PY" - "$DATABASE_URL" <<'PY'
import sys
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
d = conninfo_to_dict(sys.argv[1].replace("postgresql+psycopg://", "postgresql://"))
db = d.get("dbname") or "pipeline"
d["dbname"] = "postgres"
with psycopg.connect(make_conninfo(**d), autocommit=True, connect_timeout=5) as conn:
    if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone() is None:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
        print(f"postgres: created database {db}")
PY
}

down() {
  local ver name
  if [ -f "$MARK" ]; then
    read -r ver name < "$MARK"
    pg_ctlcluster "$ver" "$name" stop || true
    rm -f "$MARK"
    unscope_hba "$ver" "$name"   # removes our marked lines only: the file is as before `up`
    echo "postgres: stopped $ver/$name"
  else
    read -r ver name < <(cluster_on_port) || true
    if [ -n "${ver:-}" ] && owned "$ver" "$name"; then
      unscope_hba "$ver" "$name"
      pg_ctlcluster "$ver" "$name" reload >/dev/null 2>&1 || true
    fi
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
