#!/usr/bin/env bash
# Runs egressd on this host: installs what is missing (Debian packages, npm
# dependencies), builds, puts `egressd` on PATH (/usr/local/bin/egressd, a link
# to this tree's build), and starts `egressd` (agent + API on 127.0.0.1:8080,
# embedded Redis under /var/lib/egressd). Arguments go to egressd.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) -ne 0 ]]; then
  echo "run: egressd loads BPF programs and attaches them to cgroups; run as root (sudo $0)" >&2
  exit 1
fi
bash scripts/setup.sh
bash scripts/build.sh
bash scripts/link-cli.sh
exec node dist/cli/main.js "$@"
