#!/usr/bin/env bash
# Builds the guest root file system for the VM tests from Debian packages only:
# debootstrap bookworm (minbase) with the stock kernel, the packages the
# privileged suite needs, and extra kernels for the matrix (bookworm-backports,
# bullseye) where the mirror serves them. The result is cached as
# .vm/rootfs-<hash>.tar (hash of this script), so a re-run skips debootstrap.
# Prints the tarball's path on stdout. Needs root (debootstrap, chroot).
#
#   MIRROR=URL   the Debian archive (default: the one this host's apt uses)
set -euo pipefail
cd "$(dirname "$0")/../.."
root_dir=$PWD
# The Debian mirror this host's apt uses for bookworm, unless MIRROR is given.
host_mirror() {
  local uri
  uri=$(grep -hs -A3 '^Types: deb' /etc/apt/sources.list.d/*.sources | awk '/^URIs:/{print $2}' |
    grep -v -- '-security' | head -1)
  [[ -n $uri ]] || uri=$(awk '$1 == "deb" && $3 ~ /^bookworm$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
  echo "$uri"
}
MIRROR=${MIRROR:-$(host_mirror)}
if [[ -z $MIRROR ]]; then
  echo "build-image: no Debian mirror found in /etc/apt; set MIRROR=<the Debian archive's URL>" >&2
  exit 1
fi
VM_DIR=${VM_DIR:-$root_dir/.vm}
mkdir -p "$VM_DIR"

# Packages in the guest: the kernel, what the suite runs (redis-server, ip,
# nsenter, dnsmasq, libbpf through koffi, wrk for the API load, curl for the
# README walkthrough, a C compiler for the uapi layout test), and what a Vagrant box needs
# (systemd, ssh, sudo). The hash of this file keys the cache.
packages=(
  linux-image-amd64 initramfs-tools kmod
  redis-server iproute2 util-linux procps dnsmasq-base dnsutils libbpf1 bpftool
  libstdc++6 ca-certificates wrk curl gcc libc6-dev
  systemd-sysv udev openssh-server sudo ifupdown isc-dhcp-client
)
# Extra kernels for the matrix: "suite:package". Each is tried; a suite the
# mirror no longer serves is skipped (and said so).
extra_kernels=(
  "bookworm-backports:linux-image-amd64"
  "bullseye:linux-image-amd64"
)

hash=$( (cat "$0"; echo "$MIRROR") | sha256sum | cut -c1-12)
tarball="$VM_DIR/rootfs-$hash.tar"
if [[ -s $tarball ]]; then
  echo "$tarball"
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "build-image: debootstrap needs root (sudo $0)" >&2
  exit 1
fi
for tool in debootstrap; do
  command -v "$tool" >/dev/null || { echo "build-image: $tool is missing: apt-get install debootstrap" >&2; exit 1; }
done

work=$(mktemp -d "$VM_DIR/build.XXXXXX")
rootfs="$work/rootfs"
cleanup() {
  for m in dev/pts dev proc sys; do
    mountpoint -q "$rootfs/$m" 2>/dev/null && umount -l "$rootfs/$m"
  done
  rm -rf "$work"
}
trap cleanup EXIT

start=$(date +%s)
echo "build-image: debootstrap bookworm into $rootfs" >&2
debootstrap --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" \
  bookworm "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
  tail -30 "$work/debootstrap.log" >&2
  exit 1
}
echo "build-image: debootstrap took $(($(date +%s) - start)) s" >&2

mount -t proc proc "$rootfs/proc"
mount -t sysfs sys "$rootfs/sys"
mount --bind /dev "$rootfs/dev"
mount --bind /dev/pts "$rootfs/dev/pts"
in_root() { chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive LC_ALL=C PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }

# Services must not start inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
chmod +x "$rootfs/usr/sbin/policy-rc.d"

for entry in "${extra_kernels[@]}"; do
  suite=${entry%%:*}
  pkg=${entry#*:}
  echo "deb $MIRROR $suite main" >"$rootfs/etc/apt/sources.list.d/$suite.list"
  policy=
  if in_root apt-get update -qq >"$work/apt-$suite.log" 2>&1; then
    policy=$(in_root apt-cache policy "$pkg" 2>&1)
  fi
  if [[ $policy != *" $suite/"* ]]; then
    echo "build-image: the mirror does not serve $suite; skipping its kernel" >&2
    rm -f "$rootfs/etc/apt/sources.list.d/$suite.list"
    continue
  fi
  # The versioned image package that suite's meta package points at, installed
  # alone (its dependencies are satisfied by bookworm's kmod, linux-base and
  # initramfs-tools), so that bookworm's own kernel stays.
  image=$(in_root apt-cache depends "$pkg/$suite" 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  if [[ -z $image ]]; then
    echo "build-image: no kernel image found behind $pkg/$suite; skipping" >&2
  elif in_root apt-get install -y -qq --no-install-recommends "$image/$suite" >>"$work/apt-$suite.log" 2>&1; then
    echo "build-image: installed $image from $suite" >&2
  else
    echo "build-image: installing $image from $suite failed; skipping (see below)" >&2
    tail -5 "$work/apt-$suite.log" >&2
  fi
  rm -f "$rootfs/etc/apt/sources.list.d/$suite.list"
done
in_root apt-get update -qq >/dev/null 2>&1 || true
in_root apt-get clean
rm -f "$rootfs/usr/sbin/policy-rc.d"

# Guest configuration: root console on the serial port, DHCP on the first NIC
# (qemu user mode), a vagrant user for the box (the insecure key is added by
# make-box.sh), no password for root on the console.
echo egressd-vm >"$rootfs/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 egressd-vm\n::1 localhost\n' >"$rootfs/etc/hosts"
printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' >"$rootfs/etc/fstab"
cat >"$rootfs/etc/network/interfaces" <<'IFACES'
auto lo
iface lo inet loopback
allow-hotplug ens3
iface ens3 inet dhcp
allow-hotplug eth0
iface eth0 inet dhcp
IFACES
in_root passwd -d root >/dev/null
in_root useradd -m -s /bin/bash -G sudo vagrant 2>/dev/null || true
echo 'vagrant:vagrant' | in_root chpasswd
echo 'vagrant ALL=(ALL) NOPASSWD: ALL' >"$rootfs/etc/sudoers.d/vagrant"
chmod 0440 "$rootfs/etc/sudoers.d/vagrant"
# Regenerated at first boot by the ssh unit when missing.
rm -f "$rootfs"/etc/ssh/ssh_host_*
mkdir -p "$rootfs/etc/systemd/system/ssh.service.d"
printf '[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n' \
  >"$rootfs/etc/systemd/system/ssh.service.d/keygen.conf"

for m in dev/pts dev sys proc; do umount "$rootfs/$m"; done
ls "$rootfs"/boot/vmlinuz-* | sed 's|.*/vmlinuz-|build-image: kernel |' >&2
tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" .
mv "$tarball.tmp" "$tarball"
echo "build-image: done in $(($(date +%s) - start)) s ($(du -h "$tarball" | cut -f1))" >&2
echo "$tarball"
