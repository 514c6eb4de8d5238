#!/usr/bin/env bash
# A real, single-node Apache Kafka broker (KRaft, combined broker + controller, loopback only)
# for the integration tests and the benchmark. The jars come from Maven Central through Maven
# (tests/kafka/pom.xml) and are cached, so only the first `fetch` downloads anything.
#
#   kafka-broker.sh fetch                  resolve the jars into the cache; prints the libs dir
#   kafka-broker.sh start DIR PORT [CPORT] start a broker with its data in DIR, listening on
#                                          127.0.0.1:PORT (0 = pick a free port) and its controller
#                                          on CPORT (default: a free port, kept in DIR for
#                                          restarts); waits until it serves; prints HOST:PORT
#   kafka-broker.sh stop DIR               SIGTERM, wait (bounded), then SIGKILL
#   kafka-broker.sh kill DIR               SIGKILL
#   kafka-broker.sh status DIR             exit 0 when the broker of DIR is running
#
# A second `start` on the same DIR keeps the data: the log dirs are formatted only once.
# Environment: SLUICE_CACHE (default ~/.cache/sluice), KAFKA_VERSION (default 4.4.0),
# KAFKA_START_TIMEOUT seconds (default 90), KAFKA_HEAP (default 512m), KAFKA_OWNER_PID (when set,
# the broker is killed once that process is gone, so a crashed test leaves no broker behind).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
version="${KAFKA_VERSION:-4.4.0}"
log4j_version="${LOG4J_VERSION:-2.26.1}"
cache="${SLUICE_CACHE:-${HOME:-/tmp}/.cache/sluice}/kafka-$version"
libs="$cache/libs"

die() {
  echo "kafka-broker: $*" >&2
  exit 1
}

fetch() {
  if [ -f "$libs/.complete" ]; then
    echo "$libs"
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found (scripts/install-deps.sh installs maven)"
  command -v java >/dev/null || die "java not found (scripts/install-deps.sh installs a JDK)"
  mkdir -p "$cache"
  local tmp
  tmp="$(mktemp -d "$cache/libs.tmp.XXXXXX")"
  echo "kafka-broker: resolving org.apache.kafka:kafka_2.13:$version from Maven Central" >&2
  if ! mvn -q -B -f "$root/tests/kafka/pom.xml" dependency:copy-dependencies \
    -Dkafka.version="$version" -Dlog4j.version="$log4j_version" \
    -DincludeScope=runtime -DoutputDirectory="$tmp" >"$cache/fetch.log" 2>&1; then
    cat "$cache/fetch.log" >&2
    rm -rf "$tmp"
    die "maven could not resolve kafka $version (try KAFKA_VERSION=4.1.2)"
  fi
  ls "$tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || die "no kafka_2.13 jar in $tmp"
  touch "$tmp/.complete"
  rm -rf "$libs"
  mv "$tmp" "$libs"
  echo "$libs"
}

freePort() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

portOpen() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# A live (not zombie) broker process: a pid file may outlive its process and its pid be reused.
alive() {
  local pid="$1"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null && return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka'
}

brokerPid() {
  local dir="$1"
  [ -f "$dir/pid" ] || return 1
  local pid
  pid="$(cat "$dir/pid")"
  alive "$pid" || return 1
  echo "$pid"
}

writeConfig() {
  local dir="$1" port="$2" cport="$3"
  cat >"$dir/server.properties" <<EOF
# Written by scripts/kafka-broker.sh: one node, broker and controller in one process, loopback.
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.quorum.bootstrap.servers=127.0.0.1:$cport
log.dirs=$dir/data
metadata.log.dir=$dir/meta
num.partitions=3
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# After a SIGKILL the restarted broker waits for its old session to expire: keep that short.
broker.session.timeout.ms=2000
broker.heartbeat.interval.ms=500
num.network.threads=2
num.io.threads=4
log.segment.bytes=67108864
log.retention.hours=24
EOF
  cat >"$dir/log4j2.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.state.name = state.change.logger
logger.state.level = WARN
logger.req.name = kafka.request.logger
logger.req.level = WARN
EOF
}

start() {
  [ $# -ge 2 ] || die "usage: start DIR PORT [CONTROLLER_PORT]"
  local dir="$1" port="$2" cport="${3:-}"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  if brokerPid "$dir" >/dev/null; then
    die "a broker already runs for $dir (pid $(cat "$dir/pid"))"
  fi
  fetch >/dev/null
  [ "$port" = 0 ] && port="$(freePort)"
  # The controller's endpoint is written into the metadata log when it is formatted, so a
  # restart must use the same controller port.
  if [ -z "$cport" ]; then
    if [ -f "$dir/controller.port" ]; then
      cport="$(cat "$dir/controller.port")"
    else
      cport="$(freePort)"
    fi
  fi
  echo "$cport" >"$dir/controller.port"
  echo "$port" >"$dir/port"
  writeConfig "$dir" "$port" "$cport"

  local heap="${KAFKA_HEAP:-512m}"
  # KAFKA_JVM_OPTS: extra JVM options, e.g. -XX:TieredStopAtLevel=1 for a faster start on a
  # loaded machine (at some cost in throughput).
  local extra=()
  read -r -a extra <<<"${KAFKA_JVM_OPTS:-}"
  local jvm=(java "-Xms128m" "-Xmx$heap" -XX:+UseG1GC -XX:MaxGCPauseMillis=20
    -Djava.awt.headless=true "-Dlog4j2.configurationFile=$dir/log4j2.properties"
    "${extra[@]}" -cp "$libs/*")

  if [ ! -f "$dir/meta/meta.properties" ]; then
    local cluster_id
    # A Kafka Uuid: 16 random bytes, URL-safe base64 without padding. One starting with '-' is
    # taken for an option by kafka-storage ("argument --cluster-id/-t: expected one argument").
    cluster_id="-"
    while [[ "$cluster_id" == -* ]]; do
      cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
    done
    "${jvm[@]}" kafka.tools.StorageTool format --standalone -t "$cluster_id" \
      -c "$dir/server.properties" >"$dir/format.log" 2>&1 || {
      cat "$dir/format.log" >&2
      die "formatting $dir failed"
    }
  fi

  # Detached from the caller's session; stdin closed so no pipe of the caller is held open.
  setsid "${jvm[@]}" kafka.Kafka "$dir/server.properties" </dev/null >>"$dir/broker.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$dir/pid"
  # Until it has exec'd, the child is still a copy of this shell.
  local tries=0
  while [ -e "/proc/$pid" ] && ! alive "$pid" && [ "$tries" -lt 200 ]; do
    sleep 0.05
    tries=$((tries + 1))
  done
  if [ -n "${KAFKA_OWNER_PID:-}" ]; then
    local owner="$KAFKA_OWNER_PID"
    (
      while kill -0 "$owner" 2>/dev/null && alive "$pid"; do sleep 1; done
      kill -9 "$pid" 2>/dev/null || true
    ) </dev/null >/dev/null 2>&1 &
    disown $! 2>/dev/null || true
  fi
  disown "$pid" 2>/dev/null || true

  local timeout="${KAFKA_START_TIMEOUT:-90}"
  local deadline=$((SECONDS + timeout))
  local lines_before
  lines_before="$(grep -c 'Kafka Server started' "$dir/broker.log" || true)"
  while true; do
    if ! alive "$pid"; then
      tail -n 40 "$dir/broker.log" >&2
      die "the broker exited during start (log: $dir/broker.log)"
    fi
    local started
    started="$(grep -c 'Kafka Server started' "$dir/broker.log" || true)"
    if [ "$started" -gt "$lines_before" ] && portOpen "$port"; then
      break
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 40 "$dir/broker.log" >&2
      kill -9 "$pid" 2>/dev/null || true
      die "the broker did not start within ${timeout}s (log: $dir/broker.log)"
    fi
    sleep 0.1
  done
  echo "127.0.0.1:$port"
}

stop() {
  [ $# -ge 1 ] || die "usage: stop DIR"
  local dir="$1" pid
  pid="$(brokerPid "$dir")" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + ${KAFKA_STOP_TIMEOUT:-30}))
  while alive "$pid"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "kafka-broker: pid $pid ignored SIGTERM; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    sleep 0.1
  done
  rm -f "$dir/pid"
}

killBroker() {
  [ $# -ge 1 ] || die "usage: kill DIR"
  local dir="$1" pid
  pid="$(brokerPid "$dir")" || return 0
  kill -KILL "$pid" 2>/dev/null || true
  while alive "$pid"; do sleep 0.05; done
  rm -f "$dir/pid"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  fetch) fetch ;;
  start) start "$@" ;;
  stop) stop "$@" ;;
  kill) killBroker "$@" ;;
  status) brokerPid "${1:?usage: status DIR}" >/dev/null ;;
  *) die "usage: $0 fetch | start DIR PORT [CONTROLLER_PORT] | stop DIR | kill DIR | status DIR" ;;
esac
