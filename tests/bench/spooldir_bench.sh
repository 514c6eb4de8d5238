#!/usr/bin/env bash
# Benchmark: spooldir source reading a generated ~1 GB file of nginx-style lines
#   (a) -> memory channel -> null sink
#   (b) -> file channel   -> null sink
# Prints wall time, lines per wall second, lines per CPU second (user+sys of the whole agent)
# and peak RSS, the median of RUNS runs, next to `wc -l FILE` measured in the same runs.
#
#   tests/bench/spooldir_bench.sh                        # build/default/sluice, 3 runs, 1 GB
#   RUNS=1 MB=100 SLUICE_BIN=build/default/sluice tests/bench/spooldir_bench.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN=${SLUICE_BIN:-build/default/sluice}
RUNS=${RUNS:-3}
MB=${MB:-1024}
WORK=${BENCH_DIR:-build/bench-spooldir}
DATA=$WORK/nginx-${MB}MB.log
mkdir -p "$WORK"
[ -x "$BIN" ] || { echo "build sluice first: $BIN is missing" >&2; exit 1; }
command -v /usr/bin/time >/dev/null || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 1; }

if [ ! -s "$DATA" ]; then
  echo "generating $DATA (~$MB MB of nginx access lines)..." >&2
  awk -v limit=$((MB * 1024 * 1024)) 'BEGIN {
    srand(42); n = 0; bytes = 0
    split("GET POST PUT DELETE HEAD", m, " "); split("200 200 200 304 404 500 301", s, " ")
    while (bytes < limit) {
      n++
      line = sprintf("10.%d.%d.%d - - [25/Nov/2026:%02d:%02d:%02d +0000] \"%s /api/v1/items/%d?page=%d HTTP/1.1\" %s %d \"https://example.com/\" \"Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0\"",
        n % 256, (n / 256) % 256, n % 199, (n / 3600) % 24, (n / 60) % 60, n % 60,
        m[n % 5 + 1], n, n % 97, s[n % 7 + 1], 200 + (n * 7919) % 50000)
      print line; bytes += length(line) + 1
    }
  }' > "$DATA.tmp" && mv "$DATA.tmp" "$DATA"
fi
BYTES=$(stat -c %s "$DATA")
LINES=$(wc -l < "$DATA")

config() {  # $1: channel type
  local ch
  if [ "$1" = memory ]; then
    ch="  ch:
    type: memory"
  else
    ch="  ch:
    type: file
    dir: $WORK/channel
    max_bytes: 2GiB
    min_free_bytes: 64MiB"
  fi
  cat <<YAML
agent:
  name: bench
  status: 127.0.0.1:0
  data_dir: $WORK/data
sources:
  spool:
    type: spooldir
    path: $WORK/spool
    min_age: 0s   # the file is complete when renamed in: no settling delay in the timing
    batch_size: 1000
    channels: [ch]
channels:
$ch
sinks:
  discard:
    type: null
    channel: ch
YAML
}

. tests/bench/lib.sh

run_one() {  # $1: memory|file ; appends "wall user sys rss" to $WORK/$1.runs
  local kind=$1
  rm -rf "$WORK/spool" "$WORK/channel" "$WORK/data"
  mkdir -p "$WORK/spool"
  ln "$DATA" "$WORK/spool/access.log"  # a hard link: the completion rename leaves $DATA alone
  config "$kind" > "$WORK/$kind.yaml"
  time_agent "$BIN" "$WORK/$kind.yaml" "$WORK/$kind.err" "$LINES" >> "$WORK/$kind.runs"
  # With a memory channel the first file of a run is completed up to 2 s after its last line
  # (the source waits that long to learn that no channel keeps positions; docs/spooldir.md), so
  # only the file channel run is expected to have completed it by now.
  if [ "$kind" = file ] && [ ! -e "$WORK/spool/access.log.COMPLETED" ]; then
    echo "warning: file not completed ($kind)" >&2
  fi
}

: > "$WORK/memory.runs"
: > "$WORK/file.runs"
: > "$WORK/wc.runs"
for run in $(seq 1 "$RUNS"); do
  /usr/bin/time -f '%e %U %S %M' -o "$WORK/wc.time" wc -l "$DATA" > /dev/null
  cat "$WORK/wc.time" >> "$WORK/wc.runs"
  run_one memory
  run_one file
  echo "run $run: memory $(tail -1 "$WORK/memory.runs"); file $(tail -1 "$WORK/file.runs"); wc -l $(cat "$WORK/wc.time")  (wall user sys rssKiB)" >&2
done

report() {
  local name=$1 file=$2 wall cpu rss
  wall=$(awk '{print $1}' "$file" | median)
  cpu=$(awk '{print $2 + $3}' "$file" | median)
  rss=$(awk '{print $4}' "$file" | median)
  printf '%-30s %8.2f %14.0f %16.0f %10.1f\n' "$name" "$wall" \
    "$(echo "$LINES / $wall" | bc -l)" "$(echo "$LINES / ($cpu + 0.0001)" | bc -l)" \
    "$(echo "$rss / 1024" | bc -l)"
}
echo
echo "spooldir, $LINES lines, $BYTES bytes, median of $RUNS runs"
printf '%-30s %8s %14s %16s %10s\n' "" "wall s" "lines/s" "lines/CPU s" "RSS MiB"
report "spooldir -> memory -> null" "$WORK/memory.runs"
report "spooldir -> file -> null" "$WORK/file.runs"
report "wc -l FILE" "$WORK/wc.runs"
