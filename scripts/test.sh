#!/usr/bin/env bash
# Builds sluice and runs the whole test suite: the normal build, the generated-docs and format
# checks, then everything again under AddressSanitizer + UndefinedBehaviorSanitizer.
# Exits non-zero when anything fails. Used by README.md and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
# ccache (when installed) keys its cache on paths relative to the checkout, so a fresh clone
# anywhere reuses what an earlier build compiled.
export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=1
./scripts/kafka-broker.sh fetch

echo "== build (default preset)"
cmake --preset default
cmake --build --preset default

echo "== generated configuration reference is up to date"
./build/default/sluice schema --format markdown | diff -u docs/CONFIGURATION.md - || {
  echo "docs/CONFIGURATION.md is stale: run ./build/default/sluice schema --format markdown > docs/CONFIGURATION.md" >&2
  exit 1
}

echo "== clang-format"
files=$(git ls-files '*.cpp' '*.h' 2>/dev/null || find agent sources channels sinks tests -name '*.cpp' -o -name '*.h')
clang-format --dry-run --Werror $files

echo "== tests (default preset)"
ctest --preset default

echo "== fuzz: syslog parser and framing (libFuzzer + ASan + UBSan, bounded)"
FUZZ_SECONDS=60 tests/fuzz/run.sh build/fuzz

echo "== Release build, tests included (what a user or packager builds; must be warning-free)"
cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build/release

echo "== build and tests under ASan + UBSan"
cmake --preset asan
cmake --build --preset asan
ctest --preset asan
