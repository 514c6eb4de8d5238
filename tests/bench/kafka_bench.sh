#!/usr/bin/env bash
# Events per second from a file channel into a local Apache Kafka broker (scripts/kafka-broker.sh)
# with 200-byte events, next to librdkafka's own producer benchmark (rdkafka_performance, built
# from the example source Debian's librdkafka-dev ships; kcat -P when that is missing) against
# the same broker in the same run. Both produce with acks=all, idempotence, linger 5 ms,
# batch.num.messages 10000 (sluice: producer_batch_size), no compression; sluice takes the
# default batch_size (1000 events) per delivery, with the default max_in_flight. Prints a table
# of the median of RUNS runs each.
#
#   tests/bench/kafka_bench.sh [EVENTS] [RUNS]        (defaults: 2000000 9)
#   SLUICE=path/to/sluice (default build/default/sluice)
#   SLUICE_BEFORE=path/to/another/sluice: also drains with that build in every run (same broker,
#   same fill), for a before/after comparison of a change; its row and ratios are printed too.
#
# Both are timed by the same stopwatch: from the start of the process until every event is
# acknowledged by the broker. The bare producer: from its exec to its exit (it exits once every
# delivery report is in). sluice: a first agent fills the file channel with EVENTS events while
# its kafka sink points at a closed port; then a second agent with no source starts with the
# filled channel and is timed from its exec until its sink has counted EVENTS delivered
# (broker-acknowledged) events, watched by one small poller process that asks the status server
# every 5 ms (spawning curl every few ms would itself take CPU from the broker on a small
# machine). rdkafka_performance's own figure (it starts its clock after it is
# set up) is printed too. A third row drains the same kind of filled channel into the null sink:
# the ceiling the channel itself allows. A warm-up round of both comes first and is not counted
# (a fresh broker is several times slower at first). Besides the ratio of the medians, the
# median of the per-run ratios is printed (each run measures both against the broker as it is
# then). Throughput swings with the broker's state on a small machine; each producer's own CPU
# time (user + system, per million events; sluice's read when it saw the last acknowledgement)
# and peak RSS are steadier figures and are printed too. Asserts nothing; exits non-zero only
# when a run fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$(pwd)"

events="${1:-2000000}"
runs="${2:-9}"
sluice="${SLUICE:-$root/build/default/sluice}"
before="${SLUICE_BEFORE:-}"
if [ -n "$before" ] && [ ! -x "$before" ]; then
  echo "kafka_bench: SLUICE_BEFORE=$before is not an executable" >&2
  exit 1
fi
[ -x "$sluice" ] || {
  echo "kafka_bench: no sluice binary at $sluice (set SLUICE=...)" >&2
  exit 1
}
for tool in curl python3 kcat cc awk; do
  command -v "$tool" >/dev/null || {
    echo "kafka_bench: $tool is needed" >&2
    exit 1
  }
done

work="$(mktemp -d /tmp/sluice-kafka-bench.XXXXXX)"
agent_pid=""
cleanup() {
  [ -n "$agent_pid" ] && kill -9 "$agent_pid" 2>/dev/null || true
  "$root/scripts/kafka-broker.sh" kill "$work/broker" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "kafka_bench: starting the broker (full JIT) in $work/broker" >&2
bootstrap="$(KAFKA_OWNER_PID=$$ "$root/scripts/kafka-broker.sh" start "$work/broker" 0)"

# --- the bare producer --------------------------------------------------------------------------
baseline_name=""
perf_src=/usr/share/doc/librdkafka-dev/examples/rdkafka_performance.c
if [ -f "$perf_src" ] || [ -f "$perf_src.gz" ]; then
  # The example includes librdkafka's internal rd.h and rdtime.h; a few lines stand in for them.
  mkdir -p "$work/perf/src" "$work/perf/ex"
  if [ -f "$perf_src" ]; then cp "$perf_src" "$work/perf/ex/"; else
    gunzip -c "$perf_src.gz" >"$work/perf/ex/rdkafka_performance.c"
  fi
  cat >"$work/perf/ex/rd.h" <<'EOF'
#ifndef SLUICE_RD_SHIM_H
#define SLUICE_RD_SHIM_H
#define _GNU_SOURCE
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
typedef int64_t rd_ts_t;
static inline rd_ts_t rd_clock(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (rd_ts_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}
#define rd_snprintf snprintf
#define RD_MAX(a, b) ((a) > (b) ? (a) : (b))
#define RD_MIN(a, b) ((a) < (b) ? (a) : (b))
#define RD_UNUSED __attribute__((unused))
#endif
EOF
  echo '#include "../ex/rd.h"' >"$work/perf/src/rd.h"
  : >"$work/perf/ex/rdtime.h"
  if cc -O2 -w -I/usr/include/librdkafka -I"$work/perf/ex" "$work/perf/ex/rdkafka_performance.c" \
    -o "$work/rdkafka_performance" -lrdkafka 2>"$work/perf/build.log"; then
    baseline_name="rdkafka_performance"
  else
    echo "kafka_bench: rdkafka_performance did not build; using kcat -P" >&2
  fi
fi
[ -n "$baseline_name" ] || baseline_name="kcat -P"

# A 200-byte body: a 10-digit number and 190 filler bytes.
filler="$(printf '%0190d' 0 | tr 0 x)"

# Creates the topic (auto-create) before a timed run, so neither side pays for that.
warmTopic() { echo warm | kcat -P -b "$bootstrap" -t "$1" -X acks=all; }

# CPU milliseconds (user + system) and peak RSS (KiB) of the bare producer, from /usr/bin/time.
timeOf() { awk '{ printf "%d %d\n", ($1 + $2) * 1000, $3 }' "$work/time.out"; }

# prints "events/s-by-the-stopwatch events/s-self-reported cpu-ms peak-rss-KiB"
baselineRun() {
  local topic="$1"
  warmTopic "$topic"
  if [ "$baseline_name" = "rdkafka_performance" ]; then
    local t0 t1 own
    t0=$(date +%s%N)
    /usr/bin/time -f '%U %S %M' -o "$work/time.out" \
      "$work/rdkafka_performance" -P -t "$topic" -b "$bootstrap" -s 200 -c "$events" -a -1 \
      -X enable.idempotence=true -X linger.ms=5 -X batch.num.messages=10000 \
      -X compression.codec=none >"$work/perf.out" 2>&1
    t1=$(date +%s%N)
    own=$(sed -n 's/.* delivered .* in \([0-9]*\)ms: \([0-9]*\) msgs\/s.*/\2/p' "$work/perf.out" |
      tail -n 1)
    echo "$((events * 1000000000 / (t1 - t0))) ${own:-0} $(timeOf)"
  else
    awk -v n="$events" -v f="$filler" 'BEGIN { for (i = 1; i <= n; i++) printf "%010d%s\n", i, f }' \
      >"$work/lines.txt"
    local t0 t1
    t0=$(date +%s%N)
    /usr/bin/time -f '%U %S %M' -o "$work/time.out" \
      kcat -P -b "$bootstrap" -t "$topic" -X acks=all -X enable.idempotence=true -X linger.ms=5 \
      -X batch.num.messages=10000 -l "$work/lines.txt"
    t1=$(date +%s%N)
    echo "$((events * 1000000000 / (t1 - t0))) $((events * 1000000000 / (t1 - t0))) $(timeOf)"
  fi
}

# Waits until the agent logging to LOG has drained TARGET events through sink k (its
# /metrics.json), looking every 5 ms from one process; prints the time (ns since
# the epoch) it first saw them, the agent's CPU milliseconds (user + system) and its peak RSS
# (KiB) at that moment. Exits non-zero when the agent PID is gone or after 600 s.
#   waitDrained LOG PID TARGET
waitDrained() {
  python3 - "$@" <<'PY'
import http.client, json, os, re, sys, time
log, pid, target = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
deadline = time.time() + 600
port, conn = None, None
while time.time() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(1)
    if port is None:
        m = re.search(r"status server listening on .* \(port (\d+)\)", open(log).read())
        if m:
            port = int(m.group(1))
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    if conn is not None:
        try:
            conn.request("GET", "/metrics.json")
            done = json.loads(conn.getresponse().read()).get("SINK.k", {}).get("EventDrainSuccessCount", 0)
            if done >= target:
                t1 = time.time_ns()
                st = open(f"/proc/{pid}/stat").read()
                f = st[st.rindex(")") + 2:].split()
                cpu_ms = (int(f[11]) + int(f[12])) * 1000 // os.sysconf("SC_CLK_TCK")
                hwm = next(l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM"))
                print(t1, cpu_ms, hwm)
                sys.exit(0)
        except (OSError, http.client.HTTPException, ValueError):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    time.sleep(0.005)
sys.exit(1)
PY
}

metric() {  # metric PORT COMPONENT NAME; cheap (curl + awk), as it runs beside the agent
  curl -s "http://127.0.0.1:$1/metrics.json" | awk -v c="\"$2\"" -v n="\"$3\"" '
    $1 == c":" && $2 == "{" { in_c = 1; next }
    in_c && /^  [}]/ { in_c = 0 }
    in_c && $1 == n":" { v = $2; sub(/,$/, "", v); printf "%d\n", v; found = 1; exit }
    END { if (!found) print 0 }'
}

statusPort() {  # statusPort LOG
  [ -f "$1" ] || return 0
  sed -n 's/.*status server listening on .* (port \([0-9]*\)).*/\1/p' "$1" | head -n 1
}

sinkYaml() {  # sinkYaml BROKERS TOPIC
  cat <<EOF
sinks:
  k:
    type: kafka
    channel: disk
    brokers: [$1]
    topic: $2
    acks: all
    idempotence: true
    linger: 5ms
    producer_batch_size: 10000
    compression: none
    message_timeout: 10m
    flush_timeout: 1s
EOF
}

sluiceRun() {  # sluiceRun TOPIC [null|before]: "null" drains into a null sink; "before"
  # drains with the SLUICE_BEFORE build (the fill always uses SLUICE)
  local topic="$1" drain_sink="${2:-kafka}" dir="$work/run-$1" drain_bin="$sluice"
  if [ "$drain_sink" = before ]; then
    drain_sink=kafka
    drain_bin="$before"
  fi
  # This runs in a command substitution, which does not inherit the EXIT trap.
  trap '[ -z "$agent_pid" ] || kill -9 "$agent_pid" 2>/dev/null || true' EXIT
  mkdir -p "$dir"
  warmTopic "$topic"
  local channel="channels:
  disk:
    type: file
    min_free_bytes: 64MiB
"
  local agent="agent:
  name: bench
  status: 127.0.0.1:0
  drain_timeout: 1s
  data_dir: $dir/data
"
  awk -v n="$events" -v f="$filler" 'BEGIN { for (i = 1; i <= n; i++) printf "%010d%s\n", i, f }' \
    >"$dir/lines.txt"
  # 1: fill the channel; the sink points at a closed port so nothing leaves it.
  {
    echo "$agent"
    printf 'sources:\n  lines:\n    type: exec\n    command: cat %s\n    restart: false\n' \
      "$dir/lines.txt"
    printf '    channels: [disk]\n'
    echo "$channel"
    sinkYaml "127.0.0.1:1" "$topic"
  } >"$dir/fill.yaml"
  "$sluice" run -c "$dir/fill.yaml" >"$dir/fill.out" 2>"$dir/fill.err" &
  agent_pid=$!
  local port="" deadline=$((SECONDS + 600))
  while :; do
    [ -n "$port" ] || port="$(statusPort "$dir/fill.err")"
    if [ -n "$port" ] && [ "$(metric "$port" CHANNEL.disk ChannelSize)" -ge "$events" ]; then break; fi
    kill -0 "$agent_pid" 2>/dev/null || {
      cat "$dir/fill.err" >&2
      return 1
    }
    [ "$SECONDS" -lt "$deadline" ] || {
      echo "kafka_bench: the channel did not fill" >&2
      return 1
    }
    sleep 0.2
  done
  kill -TERM "$agent_pid"
  wait "$agent_pid" || true
  agent_pid=""

  # 2: drain it into the broker, timed from the agent's start to the last acknowledgement.
  {
    echo "$agent"
    echo "$channel"
    if [ "$drain_sink" = null ]; then
      printf 'sinks:\n  k:\n    type: null\n    channel: disk\n    batch_size: 10000\n'
    else
      sinkYaml "$bootstrap" "$topic"
    fi
  } >"$dir/drain.yaml"
  local t0 t1 cpu rss drained
  : >"$dir/drain.err"
  t0=$(date +%s%N)
  "$drain_bin" run -c "$dir/drain.yaml" >"$dir/drain.out" 2>"$dir/drain.err" &
  agent_pid=$!
  drained=$(waitDrained "$dir/drain.err" "$agent_pid" "$events") || {
    echo "kafka_bench: the channel did not drain" >&2
    cat "$dir/drain.err" >&2
    return 1
  }
  kill -TERM "$agent_pid"
  wait "$agent_pid" || true
  agent_pid=""
  rm -rf "$dir"
  read -r t1 cpu rss <<<"$drained"
  echo "$((events * 1000000000 / (t1 - t0))) $cpu $rss"
}

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : int((v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }

base_results=()
own_results=()
sluice_results=()
null_results=()
before_results=()
base_cpu=() base_rss=() sluice_cpu=() sluice_rss=() before_cpu=() before_rss=()
# A fresh broker is several times slower on its first runs (JIT): one round of each, not counted.
echo "kafka_bench: warm-up round (not counted)" >&2
baselineRun warm-bare >/dev/null
(sluiceRun warm-sluice) >/dev/null  # a subshell: sluiceRun sets its own EXIT trap
for ((r = 1; r <= runs; r++)); do
  # The order alternates (bare, sluice, before; then before, sluice, bare), so no side always
  # meets the broker as another left it.
  bo="" so="" xo=""
  if ((r % 2)); then
    bo="$(baselineRun "bare-$r")"
    so="$(sluiceRun "sluice-$r")"
    [ -z "$before" ] || xo="$(sluiceRun "before-$r" before)"
  else
    [ -z "$before" ] || xo="$(sluiceRun "before-$r" before)"
    so="$(sluiceRun "sluice-$r")"
    bo="$(baselineRun "bare-$r")"
  fi
  zo="$(sluiceRun "null-$r" null)"
  read -r b own bc bm <<<"$bo"
  read -r s sc sm <<<"$so"
  read -r z _ <<<"$zo"
  echo "kafka_bench: run $r: $baseline_name $b events/s (own figure $own, ${bc} CPU ms," \
    "${bm} KiB), sluice $s events/s (${sc} CPU ms, ${sm} KiB), file channel -> null $z" \
    "events/s${xo:+, SLUICE_BEFORE $xo (events/s CPU-ms KiB)}" >&2
  if [ -n "$before" ]; then
    read -r x xc xm <<<"$xo"
    before_results+=("$x") before_cpu+=("$xc") before_rss+=("$xm")
  fi
  base_results+=("$b") own_results+=("$own") base_cpu+=("$bc") base_rss+=("$bm")
  sluice_results+=("$s") sluice_cpu+=("$sc") sluice_rss+=("$sm")
  null_results+=("$z")
done
med() { printf '%s\n' "$@" | median; }
# CPU seconds per million events, from CPU milliseconds for $events events.
perM() { awk -v ms="$1" -v n="$events" 'BEGIN { printf "%.2f", ms / n * 1000 }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
base_median="$(med "${base_results[@]}")"
own_median="$(med "${own_results[@]}")"
sluice_median="$(med "${sluice_results[@]}")"
null_median="$(med "${null_results[@]}")"
pct() { echo "$(($1 * 100 / (base_median > 0 ? base_median : 1)))%"; }

echo
echo "Kafka producer throughput: $events events of 200 bytes, acks=all, idempotent, median of $runs"
echo "broker: Apache Kafka (scripts/kafka-broker.sh, KRaft, 1 node, loopback) at $bootstrap"
printf '%-44s %12s %8s %12s %14s\n' "producer" "events/s" "vs bare" "CPU s / 1M" "peak RSS MiB"
printf '%-44s %12s %8s %12s %14s\n' \
  "$baseline_name (librdkafka $(dpkg-query -W -f='${Version}' librdkafka1 2>/dev/null || echo '?'))" \
  "$base_median" "100%" "$(perM "$(med "${base_cpu[@]}")")" "$(mib "$(med "${base_rss[@]}")")"
printf '%-44s %12s %8s\n' "  (its own figure, clock started once set up)" "$own_median" \
  "$(pct "$own_median")"
printf '%-44s %12s %8s %12s %14s\n' "sluice file channel -> kafka sink" "$sluice_median" \
  "$(pct "$sluice_median")" "$(perM "$(med "${sluice_cpu[@]}")")" \
  "$(mib "$(med "${sluice_rss[@]}")")"
if [ -n "$before" ]; then
  before_median="$(med "${before_results[@]}")"
  printf '%-44s %12s %8s %12s %14s\n' "SLUICE_BEFORE file channel -> kafka sink" \
    "$before_median" "$(pct "$before_median")" "$(perM "$(med "${before_cpu[@]}")")" \
    "$(mib "$(med "${before_rss[@]}")")"
fi
printf '%-44s %12s %8s\n' "sluice file channel -> null sink (ceiling)" "$null_median" \
  "$(pct "$null_median")"
perRun() {  # perRun RESULTS...: the median of RESULTS[i] / base_results[i], in percent
  local -a res=("$@")
  for ((i = 0; i < runs; i++)); do
    echo $((res[i] * 100 / (base_results[i] > 0 ? base_results[i] : 1)))
  done | median
}
echo "sluice / $baseline_name per run, median: $(perRun "${sluice_results[@]}")%"
[ -z "$before" ] ||
  echo "SLUICE_BEFORE / $baseline_name per run, median: $(perRun "${before_results[@]}")%"
echo "runs: $baseline_name ${base_results[*]} (own ${own_results[*]}); sluice ${sluice_results[*]};" \
  "null ${null_results[*]}${before:+; SLUICE_BEFORE ${before_results[*]}}"
