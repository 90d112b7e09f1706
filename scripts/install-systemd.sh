#!/usr/bin/env bash
# Installs egressd as systemd services: the built tree under /opt/egressd, the
# units under /etc/systemd/system, settings in /etc/default/egressd (kept if
# present), and `egressd` on PATH (/usr/local/bin/egressd, a link into
# /opt/egressd). Then: systemctl enable --now egressd (one host, all-in-one),
# or egressd-agent on compute hosts and egressd-api on API hosts.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "install-systemd: run as root" >&2; exit 1; }
bash scripts/setup.sh
bash scripts/build.sh
install -d /opt/egressd
cp -a package.json package-lock.json README.md dist build node_modules /opt/egressd/
bash scripts/link-cli.sh /opt/egressd/dist/cli/main.js
install -m 0644 daemon/systemd/egressd.service daemon/systemd/egressd-agent.service \
  daemon/systemd/egressd-api.service /etc/systemd/system/
if [[ ! -f /etc/default/egressd ]]; then
  install -m 0600 /dev/null /etc/default/egressd
  cat > /etc/default/egressd <<'CONF'
# egressd settings (see `egressd --help`). Empty REDIS_URL: embedded Redis (all-in-one only).
#REDIS_URL=redis://redis.internal:6379
#EGRESSD_ADMIN_KEY=
#EGRESSD_LISTEN=127.0.0.1:8080
#EGRESSD_NODE=
#EGRESSD_INTERNAL_CIDRS=
CONF
fi
for unit in egressd.service egressd-agent.service egressd-api.service; do
  systemd-analyze verify "/etc/systemd/system/$unit"
done
if [[ -d /run/systemd/system ]]; then
  systemctl daemon-reload
  echo "installed: systemctl enable --now egressd   (or egressd-agent / egressd-api)"
else
  echo "installed the units; systemd is not running here, so nothing was started"
fi
