#!/bin/bash
# Runs inside the test VM as the child of PID 1 (/sbin/egressd-vm-init, which
# mounted this tree at /opt/egressd). Sets up what systemd would (proc, sys,
# cgroup2, bpffs, tmpfs, loopback), runs the test files named on the kernel
# command line (egressd.tests=..., default: the whole suite) with ava, prints
# "egressd-vm: N passed, N failed, N skipped" and "egressd-vm: exit N".
export PATH=/opt/egressd/.vm-bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 CI=true TERM=dumb
set -u
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sys /sys
mountpoint -q /dev || mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mountpoint -q /dev/pts || mount -t devpts devpts /dev/pts
mountpoint -q /dev/shm || mount -t tmpfs tmpfs /dev/shm
mountpoint -q /run || mount -t tmpfs -o mode=755 tmpfs /run
mountpoint -q /tmp || mount -t tmpfs -o mode=1777 tmpfs /tmp
mountpoint -q /sys/fs/cgroup || mount -t cgroup2 cgroup2 /sys/fs/cgroup
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
mkdir -p /run/netns /run/lock
hostname egressd-vm
# Open files: as a systemd service or a login shell would allow (the SSE load test holds 4,500).
ulimit -n 65536
# Where the systemd units (and so systemd-analyze verify) expect node.
ln -sf /opt/egressd/.vm-bin/node /usr/bin/node
ip link set lo up
cd /opt/egressd
tests=$(sed -n 's/.*egressd\.tests=\([^ ]*\).*/\1/p' /proc/cmdline | tr ',' ' ')
accel=$(sed -n 's/.*egressd\.accel=\([a-z]*\).*/\1/p' /proc/cmdline)
# Default: the whole suite but test/vm (which checks the host's vagrant). Under
# TCG (ten times slower or worse) the kernel-facing part only: the privileged
# and unit tests. The API tests do not depend on the kernel, and their short
# client timeouts do not survive emulation.
if [[ -z $tests ]]; then
  if [[ $accel == tcg ]]; then
    # Without privileged/cli.test.js: it gives egressd 15 s to start, which
    # takes 40-60 s under TCG (until it reads EGRESSD_TEST_TIMEOUT_SCALE).
    tests=$(find dist/test/privileged dist/test/unit -name '*.test.js' -not -name cli.test.js | sort | tr '\n' ' ')
  else
    tests=$(find dist/test -name '*.test.js' -not -path 'dist/test/vm/*' | sort | tr '\n' ' ')
  fi
fi
# ava's per-test timeout, and the harness's own deadlines (for tests that
# read EGRESSD_TEST_TIMEOUT_SCALE), stretched under emulation.
ava_timeout=120s
# Test files at once: under TCG one at a time (a probe of one file timed out while
# another file loaded its programs).
ava_concurrency=$(nproc)
export EGRESSD_TEST_TIMEOUT_SCALE=1
if [[ $accel == tcg ]]; then
  ava_timeout=300s
  ava_concurrency=1
  EGRESSD_TEST_TIMEOUT_SCALE=10
fi
echo "egressd-vm: kernel $(uname -r), $(nproc) CPUs, ${accel:-unknown} acceleration, node $(node -v)"
echo "egressd-vm: test files: $tests"

# egressd itself first: start it all-in-one (embedded Redis), wait for its
# API to answer, stop it. Its refusal message, if any, is the kernel verdict.
healthy() {
  node -e "fetch('http://127.0.0.1:18080/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"
}
start=$(date +%s)
node dist/cli/main.js all --state-dir /tmp/egressd-state --bpffs-dir /sys/fs/bpf/egressd-vm \
  --listen 127.0.0.1:18080 >/tmp/egressd.log 2>&1 &
egressd_pid=$!
started=0
for _ in $(seq 120); do
  if healthy; then started=1; break; fi
  kill -0 "$egressd_pid" 2>/dev/null || break
  sleep 1
done
if ((started)); then
  echo "egressd-vm: egressd started (API answered after $(($(date +%s) - start)) s)"
else
  echo "egressd-vm: egressd did not start; its last words:"
  grep -v '^ *at ' /tmp/egressd.log | tail -8 | sed 's/^/egressd-vm:   /'
fi
kill "$egressd_pid" 2>/dev/null
wait "$egressd_pid" 2>/dev/null
rm -rf /sys/fs/bpf/egressd-vm /tmp/egressd-state

start=$(date +%s)
log=/tmp/ava.tap
set +e
# shellcheck disable=SC2086 # the test list is split on purpose
node node_modules/ava/entrypoints/cli.mjs --tap --timeout "$ava_timeout" --concurrency "$ava_concurrency" ${tests} 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
pass=$(awk '/^# pass /{print $3}' "$log" | tail -1)
fail=$(awk '/^# fail /{print $3}' "$log" | tail -1)
skip=$(awk '/^# skip /{print $3}' "$log" | tail -1)
if [[ $status -eq 0 && ${pass:-0} -eq 0 ]]; then status=1; fi
if ((!started)); then status=1; fi
echo "egressd-vm: suite took $(($(date +%s) - start)) s"
echo "egressd-vm: ${pass:-0} passed, ${fail:-0} failed, ${skip:-0} skipped"
echo "egressd-vm: exit $status"
