/**
 * Pinned cgroup links: made, read and undone in one place (the enforcer's
 * per-computer links and the guard's per-root links). An unpinned link lives
 * only as long as the fd of the process that made it, so an agent that dies
 * between linking and pinning leaves no attachment behind.
 */
import { existsSync, unlinkSync } from 'node:fs';
import { constants } from 'node:os';
import * as bpf from './libbpf.js';
import { decodeCgroupLinkInfo, UAPI_LAYOUT } from './uapi.js';

/** Attaches `progFd` to the cgroup open as `cgroupFd` and pins the link at `pin`. */
export function pinCgroupLink(progFd: number, cgroupFd: number, attachType: number, pin: string): void {
  const link = bpf.linkCreate(progFd, cgroupFd, attachType);
  try {
    bpf.objPin(link, pin);
  } finally {
    bpf.closeFd(link);
  }
}

/** The program and the cgroup of a pinned link (cgroupId 0n once its cgroup is gone); undefined when there is no pin. */
export function readCgroupLink(pin: string): { progId: number; cgroupId: bigint } | undefined {
  if (!existsSync(pin)) return undefined;
  const fd = bpf.objGet(pin);
  try {
    const info = Buffer.alloc(UAPI_LAYOUT.bpf_link_info.size);
    bpf.objInfo(fd, info);
    return decodeCgroupLinkInfo(info);
  } finally {
    bpf.closeFd(fd);
  }
}

/** Detaches a pinned link and removes its pin; nothing when there is none. */
export function unpinCgroupLink(pin: string): void {
  if (!existsSync(pin)) return;
  const fd = bpf.objGet(pin);
  try {
    bpf.linkDetach(fd);
  } catch (err) {
    // A link whose cgroup is gone is already detached.
    if (!(err instanceof bpf.LibbpfError && err.errno === constants.errno.ENOENT)) throw err;
  } finally {
    bpf.closeFd(fd);
  }
  unlinkSync(pin);
}
