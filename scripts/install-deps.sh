#!/usr/bin/env bash
# Installs, from Debian 12 packages, whatever sluice needs to build and test that is missing.
# Idempotent: a second run installs nothing and takes a second.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git ccache
  clang clang-format libclang-rt-14-dev
  libyaml-cpp-dev libuv1-dev libspdlog-dev libfmt-dev librdkafka-dev libssl-dev
  libcurl4-openssl-dev libsystemd-dev doctest-dev nlohmann-json3-dev
  libhttp-parser-dev libcli11-dev libisal-dev libre2-dev libcctz-dev tzdata
  librapidcheck-dev logrotate kcat default-jdk-headless maven
  systemd curl python3 procps time bc
  rsyslog rsyslog-openssl
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "install-deps: installing ${missing[*]}" >&2
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: these packages are missing and installing them needs root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
