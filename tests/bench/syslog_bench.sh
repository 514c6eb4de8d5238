#!/usr/bin/env bash
# Syslog receive benchmark: messages per second and CPU seconds per million messages for
# TCP (LF framing), TCP (RFC 6587 octet counting) and UDP, driven by syslog-ng's `loggen`
# (a load generator that is not part of sluice), into sluice (syslog -> memory -> null) and,
# in the same run, into rsyslog (imtcp/imudp, messages written to /dev/null by omfile) as the comparison.
#
# loggen comes from the syslog-ng-core package, which conflicts with rsyslog: it is unpacked
# (apt-get download + dpkg -x) into a cache directory, never installed.
#
# Usage: tests/bench/syslog_bench.sh [sluice-binary] [messages]   (default: build/default/sluice, 1000000)
#   RUNS=5 (default 3): every (receiver, transport) pair is measured RUNS times, interleaved, and
#   the medians are printed at the end. Prints one line per run and pair. Asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/../.."
SLUICE="${1:-build/default/sluice}"
N="${2:-1000000}"
RUNS="${RUNS:-3}"
MODES="${MODES:-tcp-lf tcp-octet udp}"
SIZE="${SIZE:-256}"
CACHE="${LOGGEN_CACHE:-build/loggen-cache}"
work="$(mktemp -d /tmp/sluice-syslog-bench.XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

if [ ! -x "$CACHE/root/usr/bin/loggen" ]; then
  mkdir -p "$CACHE"
  (cd "$CACHE" && apt-get download syslog-ng-core >/dev/null 2>&1 && dpkg -x syslog-ng-core_*.deb root)
fi
LR="$(cd "$CACHE/root" && pwd)"
loggen() {
  SYSLOGNG_PREFIX="$LR/usr" LD_LIBRARY_PATH="$LR/usr/lib/syslog-ng" "$LR/usr/bin/loggen" "$@"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
clk=$(getconf CLK_TCK)
now() { date +%s.%N; }

# Waits until `count_cmd` prints >= N (or nothing changed for 10 s); prints "count end_time".
wait_count() {
  local count_cmd="$1" last=-1 last_change stable_limit=10 c
  last_change=$(now)
  while :; do
    c=$(eval "$count_cmd" 2>/dev/null || echo 0)
    if [ "$c" -ge "$N" ]; then echo "$c $(now)"; return; fi
    if [ "$c" != "$last" ]; then last=$c; last_change=$(now); fi
    if (( $(echo "$(now) - $last_change > $stable_limit" | bc) )); then echo "$c $last_change"; return; fi
    sleep 0.05
  done
}

report() {  # receiver transport count start end ticks0 ticks1
  python3 - "$@" <<'PY'
import sys
recv, mode, count, t0, t1, c0, c1, clk = sys.argv[1:]
count = int(count); secs = float(t1) - float(t0); cpu = (int(c1) - int(c0)) / int(clk)
rate = count / secs if secs > 0 else 0
per_m = cpu / count * 1e6 if count else 0
print(f"{recv:8s} {mode:10s} received {count:>9d}  {rate:>10.0f} msg/s  {per_m:6.2f} CPU s per 1M msgs")
PY
}

# Medians over the runs of every (receiver, transport) line printed by report().
summary() {
  python3 - "$1" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) < 8 or f[2] != "received": continue
    rows.setdefault((f[0], f[1]), []).append((int(f[3]), float(f[4]), float(f[6])))
for (recv, mode), v in rows.items():
    print(f"{recv:8s} {mode:10s} runs {len(v)}  received min {min(x[0] for x in v):>9d}  "
          f"median {statistics.median(x[1] for x in v):>10.0f} msg/s  "
          f"{statistics.median(x[2] for x in v):6.2f} CPU s per 1M msgs")
PY
}

# ---- sluice ----
run_sluice() {  # mode
  local mode="$1" tcp udp cfg status c0 t0 res
  tcp=$(free_port); udp=$(free_port)
  cfg="$work/sluice.yaml"
  cat > "$cfg" <<YAML
agent:
  name: bench
  status: 127.0.0.1:0
sources:
  sys:
    type: syslog
    listeners: [tcp://127.0.0.1:$tcp, udp://127.0.0.1:$udp]
    udp_receive_buffer: 8MiB
    channels: [mem]
channels:
  mem:
    type: memory
    max_events: 100000
sinks:
  out:
    type: null
    channel: mem
YAML
  "$SLUICE" run -c "$cfg" 2> "$work/sluice.err" &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 200); do
    status=$(grep -o 'status server listening on .* (port [0-9]*)' "$work/sluice.err" | grep -o '[0-9]*)$' | tr -d ')' || true)
    [ -n "$status" ] && break
    sleep 0.05
  done
  local count_cmd="curl -s http://127.0.0.1:$status/metrics.json | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"SINK.out\"].get(\"EventDrainSuccessCount\",0))'"
  c0=$(cpu_ticks "$pid"); t0=$(now)
  send "$mode" "$tcp" "$udp"
  res=$(wait_count "$count_cmd")
  report sluice "$mode" ${res% *} "$t0" ${res#* } "$c0" "$(cpu_ticks "$pid")" "$clk"
  if [ "${res% *}" -lt "$N" ]; then
    echo "sluice received ${res% *} of $N; its log:" >&2
    tail -n 20 "$work/sluice.err" >&2
  fi
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

# ---- rsyslog ----
run_rsyslog() {  # mode
  local mode="$1" tcp udp c0 t0 res
  tcp=$(free_port); udp=$(free_port)
  mkdir -p "$work/rs"; rm -f "$work/rs/stats"
  cat > "$work/rsyslog.conf" <<CONF
global(workDirectory="$work/rs")
module(load="impstats" interval="1" format="json" log.file="$work/rs/stats" log.syslog="off" resetCounters="off")
module(load="imtcp")
module(load="imudp")
input(type="imtcp" port="$tcp" address="127.0.0.1")
input(type="imudp" port="$udp" address="127.0.0.1" rcvbufSize="8m")
*.* action(type="omfile" file="/dev/null")
CONF
  /usr/sbin/rsyslogd -n -f "$work/rsyslog.conf" -i "$work/rs/pid" 2> "$work/rsyslog.err" &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 200); do [ -s "$work/rs/stats" ] && break; sleep 0.05; done
  # imtcp and imudp both report "submitted"; the stats file gets a line per second.
  local count_cmd="python3 -c 'import json,sys
tot={}
for l in open(\"$work/rs/stats\"):
    l=l[l.find(\"{\"):]
    try: d=json.loads(l)
    except Exception: continue
    if d.get(\"origin\") in (\"imtcp\",\"imudp\") and \"submitted\" in d: tot[d[\"name\"]]=d[\"submitted\"]
print(sum(tot.values()))'"
  c0=$(cpu_ticks "$pid"); t0=$(now)
  send "$mode" "$tcp" "$udp"
  res=$(wait_count "$count_cmd")
  report rsyslog "$mode" ${res% *} "$t0" ${res#* } "$c0" "$(cpu_ticks "$pid")" "$clk"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

send() {  # mode tcp udp
  case "$1" in
    tcp-lf) loggen -i -S -Q -r 100000000 -s "$SIZE" -n "$N" 127.0.0.1 "$2" >/dev/null 2>&1 ;;
    tcp-octet) loggen -i -S -P -Q -r 100000000 -s "$SIZE" -n "$N" 127.0.0.1 "$2" >/dev/null 2>&1 ;;
    udp) loggen -i -D -Q -r 200000 -s "$SIZE" -n "$N" 127.0.0.1 "$3" >/dev/null 2>&1 ;;
  esac
}

echo "syslog bench: $N messages of $SIZE bytes per run; $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
for run in $(seq "$RUNS"); do
  echo "-- run $run of $RUNS"
  for mode in $MODES; do
    run_sluice "$mode" | tee -a "$work/results"
    run_rsyslog "$mode" | tee -a "$work/results"
  done
done
echo "-- medians of $RUNS runs"
summary "$work/results"
