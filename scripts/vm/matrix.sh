#!/usr/bin/env bash
# The kernel matrix as CI runs it (.ci/run, after scripts/test.sh has built
# the tree): Debian 12's own kernel, the floor operators run, and the newest
# Debian kernel in the image, each booted under qemu (KVM where it works,
# else TCG), running the test files that exercise a kernel feature: every
# feature's floor is covered (see README "Kernel features").
#
#   bash scripts/vm/matrix.sh [run.sh options]
#
# The image is cached in VM_DIR (default /var/cache/egressd-vm, outside the
# clone, so a CI machine that ran it once boots without rebuilding); on a
# fresh machine it is built from Debian packages (about 5 minutes).
set -euo pipefail
cd "$(dirname "$0")/../.."
export VM_DIR=${VM_DIR:-/var/cache/egressd-vm}
# One file per feature (or per way a feature can fail); the rest of the
# privileged suite checks user-space behaviour that the kernel does not change.
files=(
  unit/abi*.test.js
  privileged/programs.test.js
  privileged/enforce.test.js
  privileged/adopt.test.js
  privileged/events.test.js
  privileged/dns.test.js
  privileged/names.test.js
  privileged/revoke.test.js
  privileged/audit.test.js
  privileged/faults.test.js
)
exec bash scripts/vm/run.sh --no-build --kernel matrix "$@" "${files[@]/#/dist/test/}"
