/**
 * Computers' cgroup attachments: one pinned link per hook under
 * <pinDir>/computers/<id>/<hook>. The pins keep the programs attached while
 * no agent runs; a restarted agent reads them back (which cgroup each
 * computer is attached to) instead of attaching again.
 */
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, rmdirSync } from 'node:fs';
import path from 'node:path';
import { pinCgroupLink, readCgroupLink, unpinCgroupLink } from './links.js';
import { HOOKS, type HookName, type LoadedObject } from './loader.js';

export class Attachments {
  private readonly dir: string;
  /**
   * The cgroup id of each computer found pinned at start (an adopted pin
   * directory), by cgroup id, until this process detaches it: deny events
   * name computers by cgroup id, and those the kernel wrote while no agent
   * ran are read before the resync has attached anything.
   */
  private readonly pinnedAt = new Map<bigint, string>();

  constructor(private readonly obj: Pick<LoadedObject, 'pinDir' | 'programs'>) {
    this.dir = path.join(obj.pinDir, 'computers');
    mkdirSync(this.dir, { recursive: true });
  }

  /** Indexes the pins an earlier agent left: one pin a computer, the cgroup its first hook's link points at. */
  adoptPins(): void {
    for (const id of this.ids()) {
      const cgroupId = readCgroupLink(path.join(this.dir, id, HOOKS[0].name))?.cgroupId ?? 0n;
      if (cgroupId !== 0n) this.pinnedAt.set(cgroupId, id);
    }
  }

  /** The computer found pinned at `cgroupId` at start, unless detached since. */
  pinnedComputerAt(cgroupId: bigint): string | undefined {
    return this.pinnedAt.get(cgroupId);
  }

  /** The ids of every computer with pins (cheap: no syscall per hook, unlike linked()). */
  ids(): string[] {
    return readdirSync(this.dir).sort();
  }

  has(id: string): boolean {
    return existsSync(path.join(this.dir, id));
  }

  /** The cgroup that the computer's pinned links point at (0n: gone), or undefined when it has none. */
  linked(id: string): { cgroupId: bigint; hooks: HookName[] } | undefined {
    const dir = path.join(this.dir, id);
    if (!existsSync(dir)) return undefined;
    const hooks: HookName[] = [];
    let cgroupId: bigint | undefined;
    for (const hook of HOOKS) {
      const info = readCgroupLink(path.join(dir, hook.name));
      if (!info) continue;
      hooks.push(hook.name);
      if (cgroupId === undefined || info.cgroupId === 0n) cgroupId = info.cgroupId;
    }
    return { cgroupId: cgroupId ?? 0n, hooks };
  }

  /**
   * Links every hook, in HOOKS order, to the cgroup at `cgroupPath` and pins
   * the links; `afterFirst` runs once the first is attached (the cgroup's
   * storage exists from then on). On an error, what was linked stays: the
   * caller detaches.
   */
  attach(id: string, cgroupPath: string, afterFirst: () => void): void {
    const dir = path.join(this.dir, id);
    mkdirSync(dir, { recursive: true });
    const cgroupFd = openSync(cgroupPath, 'r');
    try {
      for (const [i, hook] of HOOKS.entries()) {
        pinCgroupLink(this.obj.programs[hook.name].fd, cgroupFd, hook.attachType, path.join(dir, hook.name));
        if (i === 0) afterFirst();
      }
    } finally {
      closeSync(cgroupFd);
    }
  }

  /** Detaches every hook of the computer (at `cgroupId`, as linked() said) and removes its pins. */
  detach(id: string, cgroupId: bigint | undefined): void {
    if (cgroupId !== undefined && this.pinnedAt.get(cgroupId) === id) this.pinnedAt.delete(cgroupId);
    const dir = path.join(this.dir, id);
    if (!existsSync(dir)) return;
    // Connect and sendmsg hooks first, sock_create last: the reverse of attach.
    for (const hook of [...HOOKS].reverse()) unpinCgroupLink(path.join(dir, hook.name));
    rmdirSync(dir);
  }
}
