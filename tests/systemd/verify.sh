#!/usr/bin/env bash
# Checks systemd/sluice.service with `systemd-analyze verify`.
#
#   tests/systemd/verify.sh PATH_TO_SLUICE_BINARY
#
# verify insists that ExecStart= names an existing executable, so the unit is copied to a temp
# dir with /usr/bin/sluice replaced by the given (built) binary. It fails on a non-zero exit
# status and on any line of output about sluice.service: verify only *warns* about an unknown
# key or a value it cannot parse, with exit status 0, and those are exactly the typos to catch.
#
# Environment: works as root without systemd as PID 1 (containers, CI); verify then reads unit
# files from disk and needs no manager. On Debian 12 / systemd 252 a clean unit prints nothing.
# The only output ignored is a diagnostic that names another unit: verify also loads the units
# ours depends on (network-online.target, multi-user.target and what they pull in) from the host,
# and a host's broken unrelated unit is not our failure. --recursive-errors=no keeps those out of
# the exit status too.
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 PATH_TO_SLUICE_BINARY" >&2
  exit 2
fi
binary=$(realpath -- "$1")
if [[ ! -x "$binary" ]]; then
  echo "verify.sh: $binary is not an executable file" >&2
  exit 2
fi
if ! command -v systemd-analyze >/dev/null; then
  echo "verify.sh: systemd-analyze not found (apt-get install systemd)" >&2
  exit 2
fi

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
unit="$here/../../systemd/sluice.service"
tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT

# Replace the binary of ExecStart= only; keep the arguments.
sed "s|^ExecStart=/usr/bin/sluice\\([[:space:]]\\)|ExecStart=${binary}\\1|" "$unit" \
  >"$tmp/sluice.service"
if ! grep -q "^ExecStart=${binary} " "$tmp/sluice.service"; then
  echo "verify.sh: no 'ExecStart=/usr/bin/sluice ...' line in $unit" >&2
  exit 1
fi

status=0
output=$(cd "$tmp" && systemd-analyze verify --recursive-errors=no --man=no \
  "$tmp/sluice.service" 2>&1) || status=$?

failed=0
unit_types='service|socket|target|timer|path|mount|automount|swap|slice|scope|device'
other_unit="^(/[^ :]*/)?[A-Za-z0-9@._\\\\:-]+\\.(${unit_types})(:[0-9]+)?: "
while IFS= read -r line; do
  [[ -z "$line" ]] && continue
  if [[ "$line" =~ $other_unit && "$line" != *sluice.service* ]]; then
    echo "ignored (about another unit): $line"
  else
    echo "$line"
    failed=1
  fi
done <<<"$output"

if [[ $status -ne 0 || $failed -ne 0 ]]; then
  echo "FAIL: systemd-analyze verify found problems in sluice.service (exit status $status)"
  exit 1
fi
echo "OK: systemd-analyze verify reports nothing for sluice.service"
