#!/usr/bin/env bash
# The VM test runner (npm run test:vm): builds the tree, builds (or reuses) a
# Debian bookworm guest image from Debian packages (scripts/vm/build-image.sh),
# boots it with qemu straight into a test init (no systemd), runs the suite
# inside with ava, prints the guest's summary and exits non-zero on failure.
# Downloads nothing but Debian packages (and npm ones through setup.sh).
#
#   bash scripts/vm/run.sh [--kernel default|matrix|all|VERSION[,VERSION]] [--accel auto|kvm|tcg]
#                          [--timeout SECONDS] [--no-build] [TEST_FILE_GLOB ...]
#
# --kernel matrix: Debian 12's own kernel and the newest one in the image (what
# CI runs, through scripts/vm/matrix.sh); all: every kernel in the image.
# TEST_FILE_GLOB defaults to the whole suite (ava's "files": dist/test/**).
# Guest networking is qemu user mode with restrict=on: the guest reaches
# nothing outside (the tests use loopback and network namespaces of their own).
# Needs root (debootstrap, and mkfs.ext4 -d keeps file ownership).
set -euo pipefail
cd "$(dirname "$0")/../.."
root_dir=$PWD
VM_DIR=${VM_DIR:-$root_dir/.vm}

kernels=default
accel=${VM_ACCEL:-auto}
timeout=${VM_TIMEOUT:-3600}
build=1
tests=()
while (($#)); do
  case $1 in
  --kernel) kernels=$2; shift 2 ;;
  --accel) accel=$2; shift 2 ;;
  --timeout) timeout=$2; shift 2 ;;
  --no-build) build=0; shift ;;
  -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
  *) tests+=("$1"); shift ;;
  esac
done

if [[ $(id -u) -ne 0 ]]; then
  echo "test:vm: building the guest image needs root (debootstrap, file ownership): sudo $0" >&2
  exit 1
fi
missing=()
for tool in qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils debootstrap:debootstrap mkfs.ext4:e2fsprogs; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if ((${#missing[@]})); then
  echo "test:vm: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

t0=$(date +%s)
if ((build)); then
  bash scripts/setup.sh
  bash scripts/build.sh
fi

tarball=$(bash scripts/vm/build-image.sh)
hash=$(basename "$tarball" .tar)
hash=${hash#rootfs-}

# The system disk (cached, booted with -snapshot so it never changes) and the
# kernels, extracted from the root file system.
system_img="$VM_DIR/system-$hash.img"
kdir="$VM_DIR/kernels-$hash"
if [[ ! -s $system_img || ! -s $kdir/default ]]; then
  s=$(date +%s)
  stage=$(mktemp -d "$VM_DIR/stage.XXXXXX")
  trap 'rm -rf "$stage"' EXIT
  tar -C "$stage" --numeric-owner -xf "$tarball"
  # PID 1 of the test boot: mounts the tree disk and runs its guest-init.sh,
  # reaping orphans, then powers off. Fixed here; the test logic lives in the tree.
  cat >"$stage/sbin/egressd-vm-init" <<'INIT'
#!/bin/bash
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -o remount,rw /
mkdir -p /opt/egressd
if mount -t ext4 /dev/vdb /opt/egressd; then
  /opt/egressd/scripts/vm/guest-init.sh </dev/null &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do wait "$pid"; done
else
  echo "egressd-vm: the tree disk /dev/vdb did not mount"
  echo "egressd-vm: exit 2"
fi
sync
echo o >/proc/sysrq-trigger
sleep 30
INIT
  chmod 755 "$stage/sbin/egressd-vm-init"
  mkdir -p "$stage/opt/egressd"
  rm -rf "$kdir"
  mkdir -p "$kdir"
  for v in "$stage"/boot/vmlinuz-*; do
    ver=${v##*/vmlinuz-}
    cp "$v" "$kdir/vmlinuz-$ver"
    cp "$stage/boot/initrd.img-$ver" "$kdir/initrd.img-$ver"
  done
  chroot "$stage" dpkg-query -W -f '${Depends}' linux-image-amd64 |
    sed -n 's/.*linux-image-\([0-9][^ ,]*\).*/\1/p' >"$kdir/default"
  size=$(($(du -sm "$stage" | cut -f1) + 1024))
  rm -f "$system_img"
  mkfs.ext4 -q -F -L egressd-root -d "$stage" "$system_img" "${size}M" >/dev/null
  rm -rf "$stage"
  trap - EXIT
  echo "test:vm: system disk built in $(($(date +%s) - s)) s" >&2
fi

available=()
for v in "$kdir"/vmlinuz-*; do available+=("${v##*/vmlinuz-}"); done
case $kernels in
default) selected=("$(cat "$kdir/default")") ;;
# Debian 12's own kernel (the floor users run) and the newest kernel in the image.
matrix)
  selected=("$(cat "$kdir/default")")
  newest=$(printf '%s\n' "${available[@]}" | sort -V | tail -1)
  [[ $newest == "${selected[0]}" ]] || selected+=("$newest")
  ;;
all) selected=("${available[@]}") ;;
*) IFS=, read -r -a selected <<<"$kernels" ;;
esac
for k in "${selected[@]}"; do
  [[ -f $kdir/vmlinuz-$k ]] || { echo "test:vm: no kernel $k; the image has: ${available[*]}" >&2; exit 1; }
done

# The tree disk: this work tree as built (without .git, .vm, the biome binary),
# plus this host's node (Debian bookworm's nodejs is 18; egressd needs 20).
run_dir=$(mktemp -d "$VM_DIR/run.XXXXXX")
qemu_pid=
cleanup() {
  if [[ -n $qemu_pid ]] && kill -0 "$qemu_pid" 2>/dev/null; then kill "$qemu_pid" 2>/dev/null || true; fi
  rm -rf "$run_dir"
}
trap cleanup EXIT
s=$(date +%s)
mkdir -p "$run_dir/tree/.vm-bin"
tar -C "$root_dir" --exclude=./.git --exclude=./.vm --exclude=./node_modules/@biomejs -cf - . |
  tar -C "$run_dir/tree" -xf -
node_bin=$(readlink -f "$(command -v node)")
cp "$node_bin" "$run_dir/tree/.vm-bin/node"
size=$(($(du -sm "$run_dir/tree" | cut -f1) + 512))
mkfs.ext4 -q -F -L egressd-tree -d "$run_dir/tree" "$run_dir/tree.img" "${size}M" >/dev/null
rm -rf "$run_dir/tree"
echo "test:vm: tree disk built in $(($(date +%s) - s)) s" >&2

# KVM is worth a try when /dev/kvm is usable and the CPU says it has
# hardware virtualisation (a /dev/kvm without vmx or svm, as in some nested
# VMs, aborts qemu at once); boot() still falls back on any KVM failure.
kvm_works() {
  [[ -r /dev/kvm && -w /dev/kvm ]] && grep -qwE 'vmx|svm' /proc/cpuinfo
}

# boot KERNEL ACCEL LOG: boots once; returns 0 when the guest printed its exit
# line, 3 when KVM failed to run the guest (fall back to TCG), 1 otherwise.
boot() {
  local ver=$1 acc=$2 log=$3 err=$3.$2.err limit=$timeout
  local cpu=max
  local cmdline="console=ttyS0 root=/dev/vda rw init=/sbin/egressd-vm-init panic=-1 quiet loglevel=4"
  cmdline+=" systemd.unified_cgroup_hierarchy=1 egressd.accel=$acc"
  ((${#tests[@]})) && cmdline+=" egressd.tests=$(IFS=,; echo "${tests[*]}")"
  local args=(-machine q35 -m "${VM_MEMORY:-4096}" -smp "${VM_CPUS:-$(nproc)}" -cpu "$cpu"
    -kernel "$kdir/vmlinuz-$ver" -initrd "$kdir/initrd.img-$ver" -append "$cmdline"
    -drive "file=$system_img,format=raw,if=virtio,snapshot=on"
    -drive "file=$run_dir/tree.img,format=raw,if=virtio"
    -nic user,restrict=on,model=virtio-net-pci
    -display none -monitor none -serial "file:$log" -no-reboot)
  if [[ $acc == kvm ]]; then args+=(-accel kvm); else args+=(-accel tcg,thread=multi); fi
  : >"$log"
  qemu-system-x86_64 "${args[@]}" 2>"$err" &
  qemu_pid=$!
  local start shown=0 now
  start=$(date +%s)
  while kill -0 "$qemu_pid" 2>/dev/null; do
    sleep 1
    now=$(date +%s)
    # Echo the guest's console as it comes.
    local lines
    lines=$(wc -l <"$log")
    if ((lines > shown)); then sed -n "$((shown + 1)),${lines}p" "$log"; shown=$lines; fi
    if [[ $acc == kvm ]] && { grep -q 'KVM internal error\|emulation failure' "$err" ||
      { ((now - start > ${VM_KVM_PROBE:-15})) && ! grep -q . "$log"; }; }; then
      kill "$qemu_pid" 2>/dev/null || true
      wait "$qemu_pid" 2>/dev/null || true
      qemu_pid=
      echo "test:vm: KVM cannot run this guest ($(grep -m1 -o 'KVM internal error.*\|emulation failure' "$err" || echo 'no output')); falling back to TCG" >&2
      return 3
    fi
    if ((now - start > limit)); then
      echo "test:vm: timeout: no result after ${limit} s; killing qemu ($qemu_pid)" >&2
      kill "$qemu_pid" 2>/dev/null || true
      break
    fi
  done
  wait "$qemu_pid" 2>/dev/null || true
  qemu_pid=
  sed -n "$((shown + 1)),\$p" "$log"
  # Under KVM, qemu gone before the guest said anything is KVM's failure, whatever its words
  # (an internal error, a failed MSR write, an assertion): fall back to TCG.
  if [[ $acc == kvm ]] && { grep -q 'KVM internal error\|emulation failure' "$err" || ! grep -q . "$log"; }; then
    echo "test:vm: KVM cannot run this guest ($(grep -m1 -v '^$' "$err" || echo 'no output')); falling back to TCG" >&2
    return 3
  fi
  if [[ -s $err ]]; then sed 's/^/qemu: /' "$err" | head -20 >&2; fi
  grep -q '^egressd-vm: exit ' "$log"
}

total_pass=0
total_fail=0
total_skip=0
overall=0
results=()
for ver in "${selected[@]}"; do
  log="$run_dir/console-$ver.log"
  acc=$accel
  if [[ $acc == auto ]]; then
    if kvm_works; then acc=kvm; else acc=tcg; fi
  fi
  s=$(date +%s)
  echo "test:vm: booting $ver with $acc" >&2
  set +e
  boot "$ver" "$acc" "$log"
  rc=$?
  if ((rc == 3)) && [[ $accel == auto ]]; then
    acc=tcg
    accel=tcg # and for the kernels after this one
    s=$(date +%s)
    boot "$ver" "$acc" "$log"
    rc=$?
  fi
  set -e
  line=$(tr -d '\r' <"$log" | sed -n 's/^egressd-vm: \([0-9]* passed.*\)/\1/p' | tail -1)
  status=$(tr -d '\r' <"$log" | sed -n 's/^egressd-vm: exit \([0-9]*\)/\1/p' | tail -1)
  mkdir -p "$VM_DIR/logs"
  cp "$log" "$VM_DIR/logs/console-$ver.log"
  if [[ -z $line || -z $status ]]; then
    results+=("$ver ($acc, $(($(date +%s) - s)) s): no result (see .vm/logs/console-$ver.log)")
    overall=1
    total_fail=$((total_fail + 1))
    continue
  fi
  read -r p _ f _ k _ <<<"${line//,/}"
  total_pass=$((total_pass + p))
  total_fail=$((total_fail + f))
  total_skip=$((total_skip + ${k:-0}))
  ((status == 0)) || overall=1
  results+=("$ver ($acc, $(($(date +%s) - s)) s): $line")
done

echo "test:vm: results (total $(($(date +%s) - t0)) s):"
printf 'test:vm:   %s\n' "${results[@]}"
echo "$total_pass passed, $total_fail failed, $total_skip skipped"
exit "$overall"
