#!/usr/bin/env bash
# Builds the syslog fuzz target with clang's libFuzzer + ASan + UBSan and runs it for a bounded
# time (default 60 s; FUZZ_SECONDS overrides). Exits non-zero on a crash or sanitizer report.
# Usage: tests/fuzz/run.sh [build-dir]
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-build/fuzz}"
seconds="${FUZZ_SECONDS:-60}"
mkdir -p "$out/syslog_corpus"
flags=(-std=c++20 -O1 -g -I. -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all)
clang++ "${flags[@]}" tests/fuzz/syslog_fuzz.cpp sources/syslog/syslog_parser.cpp \
  sources/syslog/syslog_timezone.cpp sources/syslog/syslog_framing.cpp agent/event.cpp -lcctz \
  -o "$out/syslog_fuzz"
# Seeds: the RFCs' examples and real-world shapes.
seed() { printf '%b' "$2" > "$out/syslog_corpus/$1"; }
seed 5424 '\x05<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - \xef\xbb\xbf'"'"'su root'"'"' failed\n'
seed sd '\x21<165>1 2003-10-11T22:14:15.003Z h evntslog - ID47 [exampleSDID@32473 iut="3" eventSource="App\\]"][x@1 a="b"] msg\n'
seed 3164 '\x03<34>Oct 11 22:14:15 mymachine su: '"'"'su root'"'"' failed\n<13>Feb  5 17:32:18 10.0.0.99 Use the BFG!\n'
seed cisco '\x40<189>52: *Mar  1 18:48:50.483 UTC: %SYS-5-CONFIG_I: Configured\n'
seed octet '\x07''27 <13>1 - - - - - - octet one12 <13>iso text\n'
seed iso '\x11<13>2026-11-25T10:20:30.123456+01:00 host1 app[9]: iso\0<13>x\r\n'
seed deviations '\x05<13>2 2026-01-02t23:59:60.1234567z h a p m [x k="a]b"][x k="1" k="2"][x] m\n<13>1 0522-11-25T10:20:30Z h a p m - y\n'
seed nopri '\x09Nov 24 08:00:01 web1 sshd[42]: no pri\nplain text\n'
"$out/syslog_fuzz" -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 \
  -artifact_prefix="$out/" \
  "$out/syslog_corpus"
