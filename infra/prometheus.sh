#!/usr/bin/env bash
# Prometheus and the dashboard for the local stack (`make up MONITORING=1`): up | down | status.
# Installs Debian's `prometheus` if missing (like infra/postgres.sh does for Postgres), runs it
# on 127.0.0.1 with file-based discovery of the pipeline's processes (app/core/targets.py),
# and serves the dashboard page (python -m app.dashboard) that queries it.
#   PROMETHEUS_PORT (9090), DASHBOARD_PORT (9300), PROMETHEUS_DIR (<repo>/.data/prometheus: config,
#   TSDB, pid files, logs; its targets/ is where processes announce themselves), SCRAPE_INTERVAL (5s)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${PROMETHEUS_DIR:-$ROOT/.data/prometheus}"
PORT="${PROMETHEUS_PORT:-9090}"
DASH_PORT="${DASHBOARD_PORT:-9300}"
INTERVAL="${SCRAPE_INTERVAL:-5s}"
PYTHON="${PYTHON:-python3}"
[ -x "$PYTHON" ] || command -v "$PYTHON" >/dev/null || PYTHON=python3  # before `make install`: status still works

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_if_missing() {
  if command -v prometheus >/dev/null; then return 0; fi
  echo "prometheus: installing Debian's prometheus package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # the package may start its own service on :9090 with its own config: not ours
  if command -v service >/dev/null; then service prometheus stop >/dev/null 2>&1 || true; fi
}

wait_port() {  # port what
  local deadline=$((SECONDS + 60))
  until port_open "$1"; do
    [ $SECONDS -lt $deadline ] || { echo "$2: not listening on 127.0.0.1:$1 after 60s (log: $DIR/$2.log)" >&2; exit 1; }
    sleep 0.2
  done
}

up() {
  mkdir -p "$DIR/targets" "$DIR/data"
  if running "$DIR/prometheus.pid"; then
    echo "prometheus: already up at http://127.0.0.1:$PORT"
  else
    if port_open "$PORT"; then echo "prometheus: port $PORT is taken by another process (set PROMETHEUS_PORT)" >&2; exit 1; fi
    install_if_missing
    sed -e "s|__TARGETS_DIR__|$DIR/targets|" -e "s|__SCRAPE_INTERVAL__|$INTERVAL|g" \
      "$ROOT/infra/prometheus/prometheus.yml" > "$DIR/prometheus.yml"
    nohup prometheus --config.file="$DIR/prometheus.yml" --storage.tsdb.path="$DIR/data" \
      --storage.tsdb.retention.time=7d --web.listen-address="127.0.0.1:$PORT" \
      > "$DIR/prometheus.log" 2>&1 &
    echo $! > "$DIR/prometheus.pid"
    wait_port "$PORT" prometheus
    echo "prometheus: up at http://127.0.0.1:$PORT (targets: $DIR/targets)"
  fi
  if running "$DIR/dashboard.pid"; then
    echo "dashboard: already up at http://127.0.0.1:$DASH_PORT/"
  else
    cd "$ROOT"
    nohup "$PYTHON" -m app.dashboard --port "$DASH_PORT" --prometheus "http://127.0.0.1:$PORT" \
      > "$DIR/dashboard.log" 2>&1 &
    echo $! > "$DIR/dashboard.pid"
    wait_port "$DASH_PORT" dashboard
    echo "dashboard: up at http://127.0.0.1:$DASH_PORT/"
  fi
}

stop() {  # pidfile name
  if running "$1"; then
    local pid; pid=$(cat "$1")
    kill "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    echo "$2: stopped"
  fi
  rm -f "$1"
}

down() {
  stop "$DIR/dashboard.pid" dashboard
  stop "$DIR/prometheus.pid" prometheus
}

status() {
  if running "$DIR/prometheus.pid"; then echo "prometheus: up at http://127.0.0.1:$PORT"; else echo "prometheus: down"; fi
  if running "$DIR/dashboard.pid"; then echo "dashboard: up at http://127.0.0.1:$DASH_PORT/"; else echo "dashboard: down"; fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
