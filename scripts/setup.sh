#!/usr/bin/env bash
# Installs egressd's system dependencies from Debian packages when missing,
# then the npm dependencies. Safe to run again; needs root for apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  clang llvm libbpf-dev libbpf1 bpftool linux-libc-dev iproute2 util-linux
  redis-server dnsmasq-base dnsutils dnsperf procps systemd
  # test/helpers/resolve.c is also linked against musl (static): how musl's resolver fails.
  musl-tools
  # Benchmarks (npm run bench): the same policy in nftables, the API's load generator.
  nftables wrk
  # A real TLS client in the name-bound connection tests; the dashboard's browser tests.
  openssl chromium fonts-dejavu-core
  # test/vm/vagrant.test.ts runs `vagrant validate` for both providers' settings.
  vagrant vagrant-libvirt
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing Debian packages: ${missing[*]}; run this script as root (sudo $0)" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Redis from Debian starts a system instance on port 6379 via its unit; egressd
# runs its own, so nothing here depends on that one.

if [[ ! -d node_modules ]] || [[ package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm ci --no-audit --no-fund
fi
