# Shared by the shell benchmarks in tests/bench/: sourced, not run.

# The median of the numbers on stdin, one per line.
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# Runs `BIN run -c CONFIG` under /usr/bin/time until its sink named `discard` has drained
# EXPECTED events (read from the status server, which the config must enable on port 0), then
# stops it with SIGTERM. Prints "wall user sys peak_rss_kib"; wall runs from the start of the
# agent to the last event drained. The agent's log goes to ERRFILE.
#   time_agent BIN CONFIG ERRFILE EXPECTED
time_agent() {
  local bin=$1 config=$2 err=$3 expected=$4
  local timefile="$err.time" start end port="" timer_pid done_count user sys rss
  start=$(date +%s.%N)
  /usr/bin/time -f '%e %U %S %M' -o "$timefile" "$bin" run -c "$config" --log-level info \
    2> "$err" &
  timer_pid=$!
  for _ in $(seq 1 500); do
    port=$(grep -o 'port [0-9]*)' "$err" 2>/dev/null | grep -o '[0-9]*' || true)
    [ -n "$port" ] && break
    sleep 0.01
  done
  [ -n "$port" ] || { cat "$err" >&2; return 1; }
  while true; do
    done_count=$(curl -s "http://127.0.0.1:$port/metrics" |
      awk '/^sluice_sink_event_drain_success_total\{name="discard"\}/ {print $2}')
    [ "${done_count:-0}" -ge "$expected" ] && break
    sleep 0.05
  done
  end=$(date +%s.%N)
  kill -TERM "$(pgrep -P "$timer_pid")"
  wait "$timer_pid"
  read -r _ user sys rss < "$timefile"
  echo "$(echo "$end - $start" | bc -l) $user $sys $rss"
}
