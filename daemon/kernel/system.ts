/**
 * Facts about the host that the agent depends on, each checked with an error
 * that says what to do: root, the cgroup2 mount, bpffs.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { EgressdError } from '../../policy/errors.js';

export interface MountInfo {
  mountPoint: string;
  fsType: string;
}

function unescapeMountPath(p: string): string {
  return p.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(Number.parseInt(oct, 8)));
}

/** Parses /proc/self/mountinfo (see proc(5)): mount point is field 5, fs type follows " - ". */
export function parseMountInfo(text: string): MountInfo[] {
  const mounts: MountInfo[] = [];
  for (const line of text.split('\n')) {
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const fields = line.slice(0, sep).split(' ');
    const fsType = line.slice(sep + 3).split(' ')[0] ?? '';
    const mountPoint = fields[4];
    if (mountPoint) mounts.push({ mountPoint: unescapeMountPath(mountPoint), fsType });
  }
  return mounts;
}

function mounts(): MountInfo[] {
  return parseMountInfo(readFileSync('/proc/self/mountinfo', 'utf8'));
}

/** The cgroup2 mount point (/sys/fs/cgroup on most hosts, /sys/fs/cgroup/unified on hybrid ones). */
export function findCgroup2Mount(mountInfo: MountInfo[] = mounts()): string {
  const all = mountInfo.filter((m) => m.fsType === 'cgroup2');
  const preferred = all.find((m) => m.mountPoint === '/sys/fs/cgroup') ?? all[0];
  if (!preferred) {
    throw new EgressdError(
      'NO_CGROUP2',
      'no cgroup2 file system is mounted: egressd attaches to cgroup v2 only. Boot with cgroup v2 ' +
        '(systemd.unified_cgroup_hierarchy=1) or mount one: mount -t cgroup2 none /sys/fs/cgroup',
    );
  }
  return preferred.mountPoint;
}

/** Resolves a computer's cgroup, given relative to the cgroup2 mount, and checks it exists. */
export function resolveCgroup(relative: string, mount = findCgroup2Mount()): { path: string; id: bigint } {
  const clean = path.posix.normalize(`/${relative}`);
  if (clean.split('/').includes('..')) {
    throw new EgressdError('BAD_CGROUP', `cgroup path "${relative}" must stay inside the cgroup2 mount`);
  }
  const full = path.join(mount, clean);
  const stat = statSync(full, { bigint: true, throwIfNoEntry: false });
  if (!stat?.isDirectory()) {
    throw new EgressdError(
      'CGROUP_MISSING',
      `cgroup "${relative}" does not exist under ${mount}: create it first (mkdir ${full}) or fix the path`,
    );
  }
  // On cgroup2 a directory's inode number is the cgroup id the kernel uses.
  return { path: full, id: stat.ino };
}

/**
 * Everything the agent needs before it may start; it never runs fail-open.
 * Throws an EgressdError that says what to do.
 */
export async function preflight(pinDir: string): Promise<{ cgroupMount: string }> {
  requireRoot();
  const cgroupMount = findCgroup2Mount();
  if (!existsSync('/sys/kernel/btf/vmlinux') && !existsSync('/proc/sys/kernel/bpf_stats_enabled')) {
    throw new EgressdError(
      'NO_BPF',
      'this kernel has no BPF support (no /proc/sys/kernel/bpf_stats_enabled): use a kernel built with CONFIG_BPF_SYSCALL and CONFIG_CGROUP_BPF (Debian and Ubuntu kernels are)',
    );
  }
  ensureBpffs(pinDir);
  // Loading libbpf throws NO_LIBBPF with the package to install.
  const bpf = await import('./libbpf.js');
  checkKernel(() => bpf.currentNetnsCookie());
  return { cgroupMount };
}

/** Linux 5.14 brought SO_NETNS_COOKIE; without it egressd cannot tell a computer's own loopback from the host's. */
export function checkKernel(netnsCookie: () => bigint, release = os.release()): void {
  try {
    netnsCookie();
  } catch (err) {
    if ((err as { errno?: number }).errno !== os.constants.errno.ENOPROTOOPT) throw err;
    throw new EgressdError(
      'KERNEL_TOO_OLD',
      `this kernel (${release}) lacks SO_NETNS_COOKIE (Linux 5.14+), which egressd needs to tell a computer's own ` +
        `loopback from the host's: run Linux 5.15 or newer (Debian 12's 6.1, Ubuntu 22.04's 5.15)`,
    );
  }
}

export function requireRoot(uid = process.getuid?.() ?? 0): void {
  if (uid !== 0) {
    throw new EgressdError(
      'NOT_ROOT',
      'egressd loads BPF programs and attaches them to cgroups: run it as root (or as the systemd unit)',
    );
  }
}

/** Mounts bpffs at `root` (normally /sys/fs/bpf) when nothing is mounted there, as systemd and Cilium do. */
export function ensureBpffs(pinDir: string): void {
  const all = mounts();
  const covering = all
    .filter((m) => pinDir === m.mountPoint || pinDir.startsWith(`${m.mountPoint}/`))
    .sort((a, b) => b.mountPoint.length - a.mountPoint.length)[0];
  if (covering?.fsType === 'bpf') return;
  const root = '/sys/fs/bpf';
  if (!pinDir.startsWith(`${root}/`) && pinDir !== root) {
    throw new EgressdError(
      'NO_BPFFS',
      `the pin directory ${pinDir} is not on a bpf file system: mount one (mount -t bpf bpf DIR) or choose a directory under ${root}`,
    );
  }
  try {
    execFileSync('mount', ['-t', 'bpf', 'bpf', root], { stdio: 'pipe' });
  } catch (err) {
    throw new EgressdError(
      'NO_BPFFS',
      `no bpf file system at ${root} and mounting one failed: ${String(err)}`,
      {
        cause: err,
      },
    );
  }
}
