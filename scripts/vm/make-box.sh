#!/usr/bin/env bash
# Packages the VM test image (scripts/vm/build-image.sh) as a local Vagrant box
# for the libvirt provider, so that vagrant/Vagrantfile works offline:
#
#   sudo bash scripts/vm/make-box.sh            # writes .vm/egressd-bookworm-local.box
#   vagrant box add --force --name egressd/bookworm-local .vm/egressd-bookworm-local.box
#   cd vagrant && EGRESSD_BOX=egressd/bookworm-local vagrant up --provider=libvirt
#
# On top of the test image the box has every Debian package scripts/setup.sh
# wants (so provisioning installs nothing), rsync (the synced folder), this
# host's Node.js and npm (Debian bookworm's nodejs is 18) at /usr/bin, and
# Vagrant's well-known insecure key for the vagrant user (Vagrant replaces it
# at the first `vagrant up`). The disk is one ext4 file system without a boot
# loader: the box's own Vagrantfile boots the kernel and initrd shipped in the
# box directly (libvirt's direct kernel boot), with net.ifnames=0 so that the
# one user-mode NIC is eth0. Needs root.
set -euo pipefail
cd "$(dirname "$0")/../.."
root_dir=$PWD
VM_DIR=${VM_DIR:-$root_dir/.vm}
out=${1:-$VM_DIR/egressd-bookworm-local.box}

[[ $(id -u) -eq 0 ]] || { echo "make-box: needs root (sudo $0)" >&2; exit 1; }
command -v qemu-img >/dev/null || { echo "make-box: qemu-img is missing: apt-get install qemu-utils" >&2; exit 1; }

# The packages of scripts/setup.sh, read from it so the two never drift apart.
mapfile -t setup_packages < <(sed -n '/^packages=(/,/^)/p' scripts/setup.sh | sed '1d;$d' | tr ' ' '\n' | sed '/^$/d')
extra=(rsync ca-certificates curl "${setup_packages[@]}")

tarball=$(bash scripts/vm/build-image.sh)
start=$(date +%s)
work=$(mktemp -d "$VM_DIR/box.XXXXXX")
rootfs="$work/rootfs"
cleanup() {
  for m in dev/pts dev sys proc; do
    mountpoint -q "$rootfs/$m" 2>/dev/null && umount -l "$rootfs/$m"
  done
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$rootfs"
tar -C "$rootfs" --numeric-owner -xf "$tarball"
mount -t proc proc "$rootfs/proc"
mount -t sysfs sys "$rootfs/sys"
mount --bind /dev "$rootfs/dev"
mount --bind /dev/pts "$rootfs/dev/pts"
in_root() { chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive LC_ALL=C PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
chmod +x "$rootfs/usr/sbin/policy-rc.d"
cp /etc/resolv.conf "$rootfs/etc/resolv.conf" 2>/dev/null || true
echo "make-box: installing ${extra[*]}" >&2
in_root apt-get update -qq
in_root apt-get install -y -qq --no-install-recommends "${extra[@]}" >"$work/apt.log" 2>&1 || {
  tail -20 "$work/apt.log" >&2
  exit 1
}
in_root apt-get clean
rm -f "$rootfs/usr/sbin/policy-rc.d" "$rootfs/etc/resolv.conf"
for m in dev/pts dev sys proc; do umount "$rootfs/$m"; done

# Node.js and npm from this host.
node_bin=$(readlink -f "$(command -v node)")
install -m 0755 "$node_bin" "$rootfs/usr/bin/node"
npm_dir=$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")
mkdir -p "$rootfs/usr/lib/node_modules"
cp -a "$npm_dir" "$rootfs/usr/lib/node_modules/npm"
ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$rootfs/usr/bin/npm"
ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$rootfs/usr/bin/npx"

# Vagrant's insecure public key (from the vagrant package, else the well-known one).
key=$(ls /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub /opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub 2>/dev/null | head -1 || true)
[[ -n $key ]] || { echo "make-box: Vagrant's keys/vagrant.pub not found: install vagrant" >&2; exit 1; }
install -d -m 0700 "$rootfs/home/vagrant/.ssh"
install -m 0600 "$key" "$rootfs/home/vagrant/.ssh/authorized_keys"
chroot "$rootfs" chown -R vagrant:vagrant /home/vagrant/.ssh
printf 'auto lo\niface lo inet loopback\nallow-hotplug eth0\niface eth0 inet dhcp\n' >"$rootfs/etc/network/interfaces"
printf 'UseDNS no\n' >"$rootfs/etc/ssh/sshd_config.d/vagrant.conf"
# qemu user-mode networking's resolver (egressd refuses to start without a
# nameserver to forward DNS to; with restrict=on it answers nothing outside).
printf 'nameserver 10.0.2.3\n' >"$rootfs/etc/resolv.conf"

box="$work/box"
mkdir -p "$box"
ver=$(chroot "$rootfs" dpkg-query -W -f '${Depends}' linux-image-amd64 | sed -n 's/.*linux-image-\([0-9][^ ,]*\).*/\1/p')
cp "$rootfs/boot/vmlinuz-$ver" "$box/vmlinuz"
cp "$rootfs/boot/initrd.img-$ver" "$box/initrd.img"
size_gb=20
raw="$work/disk.raw"
mkfs.ext4 -q -F -L egressd-root -d "$rootfs" "$raw" "${size_gb}G"
rm -rf "$rootfs"
qemu-img convert -c -O qcow2 "$raw" "$box/box.img"
rm -f "$raw"
printf '{"provider":"libvirt","format":"qcow2","virtual_size":%d}\n' "$size_gb" >"$box/metadata.json"
cat >"$box/Vagrantfile" <<'VF'
# The egressd offline box: one ext4 disk without a boot loader; boot the
# kernel and initrd shipped beside this file.
Vagrant.configure('2') do |config|
  config.vm.provider :libvirt do |lv|
    lv.kernel = File.join(__dir__, 'vmlinuz')
    lv.initrd = File.join(__dir__, 'initrd.img')
    lv.cmd_line = 'root=/dev/vda rw console=ttyS0 net.ifnames=0 systemd.unified_cgroup_hierarchy=1'
    lv.disk_bus = 'virtio'
  end
end
VF
mkdir -p "$(dirname "$out")"
tar -C "$box" -cf "$out.tmp" metadata.json Vagrantfile box.img vmlinuz initrd.img
mv "$out.tmp" "$out"
echo "make-box: $out ($(du -h "$out" | cut -f1), kernel $ver) in $(($(date +%s) - start)) s" >&2
echo "make-box: vagrant box add --force --name egressd/bookworm-local $out" >&2
