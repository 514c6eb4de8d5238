#!/usr/bin/env bash
# Benchmark: exec source (`cat` of a generated 1 GB file) -> memory channel -> null sink.
# Prints lines/s, CPU seconds per million lines and peak RSS for sluice, the median of RUNS
# runs, next to `cat FILE > /dev/null` measured in the same runs as the baseline.
#
#   tests/bench/exec_throughput.sh            # build/default/sluice, 5 runs, 10M lines of 101 B
#   RUNS=3 LINES=1000000 tests/bench/exec_throughput.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN=${SLUICE_BIN:-build/default/sluice}
RUNS=${RUNS:-5}
LINES=${LINES:-10000000}
WORK=${BENCH_DIR:-build/bench}
DATA=$WORK/lines-$LINES.txt
mkdir -p "$WORK"
[ -x "$BIN" ] || { echo "build sluice first: $BIN is missing" >&2; exit 1; }
command -v /usr/bin/time >/dev/null || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 1; }

if [ ! -s "$DATA" ]; then
  echo "generating $DATA ($LINES lines of 101 bytes)..." >&2
  seq -f '%0100.0f' 1 "$LINES" > "$DATA.tmp" && mv "$DATA.tmp" "$DATA"
fi
BYTES=$(stat -c %s "$DATA")

cat > "$WORK/bench.yaml" <<YAML
agent:
  name: bench
  status: 127.0.0.1:0
sources:
  cat:
    type: exec
    command: cat $DATA
    shell: false
    restart: false
    batch_size: 1000
    channels: [mem]
channels:
  mem:
    type: memory
sinks:
  discard:
    type: null
    channel: mem
YAML

. tests/bench/lib.sh

: > "$WORK/sluice.runs"
: > "$WORK/cat.runs"
for run in $(seq 1 "$RUNS"); do
  # Baseline: the same bytes through cat alone.
  /usr/bin/time -f '%e %U %S %M' -o "$WORK/cat.time" cat "$DATA" > /dev/null
  read -r wall user sys rss < "$WORK/cat.time"
  echo "$wall $user $sys $rss" >> "$WORK/cat.runs"

  time_agent "$BIN" "$WORK/bench.yaml" "$WORK/sluice.err" "$LINES" >> "$WORK/sluice.runs"
  read -r wall user sys rss < <(tail -1 "$WORK/sluice.runs")
  echo "run $run: sluice ${wall}s (user ${user}s sys ${sys}s, peak RSS ${rss} KiB); cat alone $(cut -d' ' -f1 "$WORK/cat.time")s" >&2
done

report() {
  local name=$1 file=$2
  local wall cpu rss
  wall=$(awk '{print $1}' "$file" | median)
  cpu=$(awk '{print $2 + $3}' "$file" | median)
  rss=$(awk '{print $4}' "$file" | median)
  printf '%-28s %14.0f %12.1f %16.3f %10.1f\n' "$name" \
    "$(echo "$LINES / $wall" | bc -l)" "$(echo "$BYTES / $wall / 1048576" | bc -l)" \
    "$(echo "$cpu / ($LINES / 1000000)" | bc -l)" "$(echo "$rss / 1024" | bc -l)"
}
echo
echo "exec(cat) -> memory -> null, $LINES lines, $BYTES bytes, median of $RUNS runs"
printf '%-28s %14s %12s %16s %10s\n' "" "lines/s" "MiB/s" "CPU s/M lines" "RSS MiB"
report "sluice" "$WORK/sluice.runs"
report "cat FILE > /dev/null" "$WORK/cat.runs"
