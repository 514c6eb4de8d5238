#!/usr/bin/env bash
# Benchmark: the tail source reading a ~1 GB file of nginx-style lines
#   tail -> memory channel -> null sink      (goal: >= 10 M lines per CPU second, RSS < 32 MiB)
#   tail -> file channel   -> null sink
# Prints lines per CPU second, lines/s (wall), wall time and peak RSS, the median of RUNS runs,
# next to `wc -l FILE` measured in the same runs.
#
#   tests/bench/tail_bench.sh                 # build/default/sluice, 3 runs, ~1 GB
#   SLUICE_BIN=build/tail/sluice RUNS=1 MB=200 tests/bench/tail_bench.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN=${SLUICE_BIN:-build/default/sluice}
RUNS=${RUNS:-3}
MB=${MB:-1024}
WORK=${BENCH_DIR:-build/bench-tail}
DATA=$WORK/access-$MB.log
mkdir -p "$WORK"
BIN=$(realpath "$BIN")
[ -x "$BIN" ] || { echo "build sluice first: $BIN is missing" >&2; exit 1; }
command -v /usr/bin/time >/dev/null || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 1; }

if [ ! -s "$DATA" ]; then
  echo "generating $DATA (~$MB MB of nginx-style lines)..." >&2
  # 64 distinct lines (~190 B each), repeated with a running number so no two lines are equal.
  awk -v mb="$MB" 'BEGIN {
    srand(42);
    split("GET POST PUT DELETE", m, " ");
    split("200 200 200 304 404 500", st, " ");
    for (i = 0; i < 64; i++) {
      tpl[i] = sprintf("10.%d.%d.%d - - [25/Nov/2026:14:%02d:%02d +0000] \"%s /api/v1/items/%d?page=%d HTTP/1.1\" %s %d \"-\" \"Mozilla/5.0 (X11; Linux x86_64) bench/%d\"",
        int(rand()*255), int(rand()*255), int(rand()*255), int(rand()*60), int(rand()*60),
        m[1 + int(rand()*4)], int(rand()*100000), int(rand()*50), st[1 + int(rand()*6)],
        int(rand()*50000), i);
    }
    limit = mb * 1048576; total = 0;
    for (n = 0; total < limit; n++) {
      line = tpl[n % 64] " " n;
      print line;
      total += length(line) + 1;
    }
  }' > "$DATA.tmp" && mv "$DATA.tmp" "$DATA"
fi
BYTES=$(stat -c %s "$DATA")
LINES=$(wc -l < "$DATA")

config() {  # $1: memory|file
  local channel
  if [ "$1" = memory ]; then
    channel="    type: memory"
  else
    channel=$'    type: file\n    max_bytes: 4GiB\n    min_free_bytes: 64MiB'
  fi
  cat <<YAML
agent:
  name: bench
  status: 127.0.0.1:0
  data_dir: $WORK/data
sources:
  tail:
    type: tail
    paths: [$(realpath "$DATA")]
    batch_size: 1000
    channels: [ch]
channels:
  ch:
$channel
sinks:
  discard:
    type: null
    channel: ch
YAML
}

. tests/bench/lib.sh

run_sluice() {  # $1: memory|file; appends "wall user sys rss" to $WORK/$1.runs
  local kind=$1
  rm -rf "$WORK/data"
  config "$kind" > "$WORK/$kind.yaml"
  local wall user sys rss
  time_agent "$BIN" "$WORK/$kind.yaml" "$WORK/$kind.err" "$LINES" >> "$WORK/$kind.runs"
  read -r wall user sys rss < <(tail -1 "$WORK/$kind.runs")
  echo "  $kind: ${wall}s (user ${user}s sys ${sys}s, peak RSS ${rss} KiB)" >&2
}

: > "$WORK/memory.runs"
: > "$WORK/file.runs"
: > "$WORK/wc.runs"
for run in $(seq 1 "$RUNS"); do
  echo "run $run" >&2
  /usr/bin/time -f '%e %U %S %M' -o "$WORK/wc.time" wc -l "$DATA" > /dev/null
  read -r wall user sys rss < "$WORK/wc.time"
  echo "$wall $user $sys $rss" >> "$WORK/wc.runs"
  echo "  wc -l: ${wall}s" >&2
  run_sluice memory
  run_sluice file
done
rm -rf "$WORK/data"

report() {
  local name=$1 file=$2
  local wall cpu rss
  wall=$(awk '{print $1}' "$file" | median)
  cpu=$(awk '{print $2 + $3}' "$file" | median)
  rss=$(awk '{print $4}' "$file" | median)
  printf '%-26s %16.0f %14.0f %9.2f %9.2f %9.1f\n' "$name" \
    "$(echo "$LINES / ($cpu + 0.0001)" | bc -l)" "$(echo "$LINES / $wall" | bc -l)" \
    "$wall" "$cpu" "$(echo "$rss / 1024" | bc -l)"
}
echo
echo "tail of $DATA: $LINES lines, $BYTES bytes, median of $RUNS runs"
printf '%-26s %16s %14s %9s %9s %9s\n' "" "lines/CPU s" "lines/s wall" "wall s" "CPU s" \
  "RSS MiB"
report "tail -> memory -> null" "$WORK/memory.runs"
report "tail -> file -> null" "$WORK/file.runs"
report "wc -l FILE" "$WORK/wc.runs"
