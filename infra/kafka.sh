#!/usr/bin/env bash
# Local Apache Kafka (KRaft) on loopback: fetch | up | down | status.
#   BROKERS=1 (default) or 3: each node is broker+controller; node i listens on
#   127.0.0.1:$((KAFKA_PORT_BASE + 2*(i-1))) (client) and the next port (controller).
#   9092/9093, 9094/9095, 9096/9097 for three nodes with the default KAFKA_PORT_BASE=9092.
# Jars come from Maven Central via infra/pom.xml into .cache/kafka/libs (git-ignored);
# data and logs live under KAFKA_DATA_DIR (default .data/kafka, git-ignored).
# A second, independent cluster (tests) = other KAFKA_PORT_BASE and KAFKA_DATA_DIR, e.g.
#   KAFKA_PORT_BASE=19092 KAFKA_DATA_DIR=/tmp/k3 BROKERS=3 infra/kafka.sh up
# and every later command (node-kill, node-start, down) with the same two variables.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LIBS="$ROOT/.cache/kafka/libs"
DATA="${KAFKA_DATA_DIR:-$ROOT/.data/kafka}"
PORT_BASE="${KAFKA_PORT_BASE:-9092}"
BROKERS="${BROKERS:-1}"
HEAP="${KAFKA_HEAP:-512m}"
PY="${PYTHON:-python3}"
[ -x "$PY" ] || command -v "$PY" >/dev/null || PY=python3  # before `make install`: status still works
START_TIMEOUT_S="${KAFKA_START_TIMEOUT:-90}"

client_port() { echo $((PORT_BASE + 2 * ($1 - 1))); }
ctrl_port() { echo $((PORT_BASE + 1 + 2 * ($1 - 1))); }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

fetch() {
  if [ -f "$LIBS/.complete" ] && [ "$LIBS/.complete" -nt "$ROOT/infra/pom.xml" ]; then return 0; fi
  if ! command -v mvn >/dev/null || ! command -v java >/dev/null; then
    echo "kafka: installing Debian's maven and openjdk-17-jre-headless"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq maven openjdk-17-jre-headless >/dev/null
  fi
  echo "kafka: fetching jars from Maven Central (infra/pom.xml)"
  rm -rf "$LIBS"; mkdir -p "$LIBS"
  mvn -q -B -f "$ROOT/infra/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$LIBS" -DincludeScope=runtime
  touch "$LIBS/.complete"
}

write_config() {  # node_id nodes cluster_dir
  local i=$1 n=$2 dir=$3 voters="" j
  for j in $(seq 1 "$n"); do voters+="${voters:+,}$j@127.0.0.1:$(ctrl_port "$j")"; done
  local rf=1 isr=1
  if [ "$n" -ge 3 ]; then rf=3; isr=2; fi
  cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=$i
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$(client_port "$i"),CONTROLLER://127.0.0.1:$(ctrl_port "$i")
advertised.listeners=PLAINTEXT://127.0.0.1:$(client_port "$i")
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/log
num.partitions=8
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=-1
log.retention.bytes=-1
message.max.bytes=16777216
log.segment.bytes=268435456
PROPS
}

java_argv() {  # JAVA=(...): the classpath glob is expanded by java, not the shell
  JAVA=(java -Xms"$HEAP" -Xmx"$HEAP" -XX:+UseG1GC -Djava.awt.headless=true
        -Dlog4j2.configurationFile="$ROOT/infra/log4j2.xml" -cp "$LIBS/*")
}
java_run() { java_argv; "${JAVA[@]}" "$@"; }

up() {
  fetch
  command -v java >/dev/null || { echo "kafka: java not found (apt-get install openjdk-17-jre-headless)" >&2; exit 1; }
  mkdir -p "$DATA"
  local have
  have=$(cat "$DATA/brokers" 2>/dev/null || echo "")
  if [ -n "$have" ] && [ "$have" != "$BROKERS" ]; then
    if any_running; then
      echo "kafka: a $have-broker cluster is running; 'make down' first to switch to $BROKERS" >&2; exit 1
    fi
    echo "kafka: switching from $have to $BROKERS brokers: wiping $DATA"
    rm -rf "$DATA"; mkdir -p "$DATA"
  fi
  echo "$BROKERS" > "$DATA/brokers"
  local cluster_id
  if [ -f "$DATA/cluster.id" ]; then cluster_id=$(cat "$DATA/cluster.id")
  else cluster_id=$(java_run kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1); echo "$cluster_id" > "$DATA/cluster.id"; fi
  local i
  for i in $(seq 1 "$BROKERS"); do start_node "$i" "$cluster_id"; done
  for i in $(seq 1 "$BROKERS"); do wait_port "$(client_port "$i")" "$i"; done
  wait_ready
  echo "kafka: up ($BROKERS broker(s)) at $(bootstrap)"
}

start_node() {  # i cluster_id
  local i=$1 cid=$2 dir="$DATA/node$1"
  mkdir -p "$dir"
  if pid_alive "$dir/pid"; then return 0; fi
  if port_open "$(client_port "$i")"; then
    if kafka_answers "$(client_port "$i")"; then
      echo "kafka: 127.0.0.1:$(client_port "$i") already serves Kafka (another checkout's stack?); using it"
      return 0
    fi
    echo "kafka: port $(client_port "$i") is taken by another process; not starting node $i" >&2; exit 1
  fi
  write_config "$i" "$BROKERS" "$dir"
  if [ ! -f "$dir/log/meta.properties" ]; then
    java_run kafka.tools.StorageTool format -t "$cid" -c "$dir/server.properties" >"$dir/format.log" 2>&1 \
      || { echo "kafka: format of node $i failed:" >&2; cat "$dir/format.log" >&2; exit 1; }
  fi
  # setsid: the broker outlives this script and the make/CI step that started it.
  java_argv
  setsid "${JAVA[@]}" kafka.Kafka "$dir/server.properties" >"$dir/server.log" 2>&1 < /dev/null &
  echo $! > "$dir/pid"
}

wait_port() {  # port node
  local deadline=$((SECONDS + START_TIMEOUT_S))
  until port_open "$1"; do
    if ! pid_alive "$DATA/node$2/pid"; then
      echo "kafka: node $2 exited while starting; last lines of $DATA/node$2/server.log:" >&2
      tail -n 20 "$DATA/node$2/server.log" >&2; exit 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      echo "kafka: node $2 not listening on 127.0.0.1:$1 after ${START_TIMEOUT_S}s; see $DATA/node$2/server.log" >&2; exit 1
    fi
    sleep 0.5
  done
}

wait_ready() {  # metadata answers with every broker registered
  local deadline=$((SECONDS + START_TIMEOUT_S))
  until "$PY" - "$(bootstrap)" "$BROKERS" <<'PY' 2>/dev/null
import sys
from confluent_kafka.admin import AdminClient
md = AdminClient({"bootstrap.servers": sys.argv[1], "log_level": 0}).list_topics(timeout=5)
sys.exit(0 if len(md.brokers) >= int(sys.argv[2]) else 1)
PY
  do
    if [ $SECONDS -ge $deadline ]; then echo "kafka: cluster metadata not ready after ${START_TIMEOUT_S}s" >&2; exit 1; fi
    sleep 1
  done
}

bootstrap() {
  local s="" i
  for i in $(seq 1 "$(cat "$DATA/brokers" 2>/dev/null || echo "$BROKERS")"); do s+="${s:+,}127.0.0.1:$(client_port "$i")"; done
  echo "$s"
}

kafka_answers() {  # port: does a Kafka broker answer metadata requests there?
  "$PY" - "127.0.0.1:$1" <<'PY' 2>/dev/null
import sys
from confluent_kafka.admin import AdminClient
sys.exit(0 if AdminClient({"bootstrap.servers": sys.argv[1], "log_level": 0}).list_topics(timeout=5).brokers else 1)
PY
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
any_running() { local f; for f in "$DATA"/node*/pid; do pid_alive "$f" && return 0; done; return 1; }

down() {
  local f stopped=0
  for f in "$DATA"/node*/pid; do
    [ -f "$f" ] || continue
    if pid_alive "$f"; then kill "$(cat "$f")" 2>/dev/null || true; stopped=$((stopped + 1)); fi
  done
  local deadline=$((SECONDS + 30))
  for f in "$DATA"/node*/pid; do
    [ -f "$f" ] || continue
    while pid_alive "$f"; do
      if [ $SECONDS -ge $deadline ]; then kill -9 "$(cat "$f")" 2>/dev/null || true; fi
      sleep 0.3
    done
    rm -f "$f"
  done
  echo "kafka: down (stopped $stopped node(s))"
}

# Kill or start one node (broker-fault tests): node-kill I | node-start I
node_kill() { local f="$DATA/node$1/pid"; pid_alive "$f" && kill -9 "$(cat "$f")"; rm -f "$f"; echo "kafka: node $1 killed"; }
node_start() { BROKERS=$(cat "$DATA/brokers"); start_node "$1" "$(cat "$DATA/cluster.id")"; wait_port "$(client_port "$1")" "$1"; echo "kafka: node $1 started"; }

status() {
  local n i
  n=$(cat "$DATA/brokers" 2>/dev/null || echo 0)
  if [ "$n" = 0 ]; then echo "kafka: not set up"; return 0; fi
  for i in $(seq 1 "$n"); do
    if pid_alive "$DATA/node$i/pid" && port_open "$(client_port "$i")"; then
      echo "kafka: node $i up at 127.0.0.1:$(client_port "$i") (pid $(cat "$DATA/node$i/pid"))"
    else echo "kafka: node $i down"; fi
  done
}

# Kafka's own consumer-group tool against the local stack, e.g. the pipeline's lag:
#   infra/kafka.sh consumer-groups --describe --group rollups
consumer_groups() {
  fetch >&2
  java_run org.apache.kafka.tools.consumer.group.ConsumerGroupCommand \
    --bootstrap-server "${KAFKA_BOOTSTRAP_SERVERS:-$(bootstrap)}" "$@"
}

case "${1:-}" in
  fetch) fetch ;;
  consumer-groups) shift; consumer_groups "$@" ;;
  up) up ;;
  down) down ;;
  status) status ;;
  bootstrap) bootstrap ;;
  node-kill) node_kill "$2" ;;
  node-start) node_start "$2" ;;
  *) echo "usage: $0 fetch|up|down|status|bootstrap|node-kill I|node-start I|consumer-groups ARGS" >&2; exit 2 ;;
esac
