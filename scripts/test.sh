#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds, type-checks, lints,
# then runs every test (unit, API against a real redis-server, and the
# privileged kernel tests, which need root, cgroup v2 and BPF and fail, never
# skip, where those are missing). Ends with "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
  echo "test: the suite loads BPF programs and makes cgroups and network namespaces; run it as root (sudo $0)" >&2
  exit 1
fi
bash scripts/setup.sh
bash scripts/build.sh
npx tsc --noEmit -p tsconfig.json
npx biome ci .

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
npx ava --tap "$@" | tee "$log"
status=${PIPESTATUS[0]}
set -e
pass=$(awk '/^# pass /{print $3}' "$log" | tail -1)
fail=$(awk '/^# fail /{print $3}' "$log" | tail -1)
skip=$(awk '/^# skip /{print $3}' "$log" | tail -1)
echo "${pass:-0} passed, ${fail:-0} failed, ${skip:-0} skipped"
if [[ $status -eq 0 && ${pass:-0} -eq 0 ]]; then
  echo "test: no test ran" >&2
  exit 1
fi
exit "$status"
