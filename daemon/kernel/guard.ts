/**
 * The sandbox-root guard: programs attached to each cgroup subtree that
 * computers live under (the agent's --cgroup-root), and the "governed" map
 * of the cgroup ids of attached computers. Under a root, a socket call from
 * a cgroup that no attached computer covers is refused (see "governed" in
 * bpf/include/egress_abi.h). That closes the window in which a cgroup removed
 * and made again at a computer's path (a new cgroup id) would run without
 * its computer's programs: it has no network until the agent attaches it.
 *
 * Pins: <pinDir>/roots/<root, URI-encoded>/<hook>, one link per guard hook.
 */
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, rmdirSync } from 'node:fs';
import path from 'node:path';
import { CGROUP_KEY_SIZE, decodeCgroupKey, encodeCgroupKey, encodeMarks } from './abi.js';
import * as bpf from './libbpf.js';
import { pinCgroupLink, readCgroupLink, unpinCgroupLink } from './links.js';
import { GUARD_HOOKS, type LoadedObject } from './loader.js';
import { allKeys, lookup } from './maps.js';
import { resolveCgroup } from './system.js';

export class SandboxGuard {
  private readonly rootsDir: string;

  constructor(
    private readonly obj: LoadedObject,
    private readonly cgroupMount: string,
  ) {
    this.rootsDir = path.join(obj.pinDir, 'roots');
  }

  /**
   * Attaches the guard to each root (paths relative to the cgroup2 mount,
   * made when missing), keeps an attachment that is already there, replaces
   * one whose cgroup was made again, and detaches roots no longer listed.
   * Returns each root's cgroup id.
   */
  attachRoots(roots: readonly string[]): Map<string, bigint> {
    mkdirSync(this.rootsDir, { recursive: true });
    const ids = new Map<string, bigint>();
    const wanted = new Set(roots.map((r) => encodeURIComponent(r)));
    for (const name of readdirSync(this.rootsDir)) if (!wanted.has(name)) this.detachRoot(name);
    for (const root of roots) {
      mkdirSync(path.join(this.cgroupMount, root), { recursive: true });
      const target = resolveCgroup(root, this.cgroupMount);
      const name = encodeURIComponent(root);
      const linked = this.linkedCgroups(name);
      if (linked.length !== GUARD_HOOKS.length || linked.some((id) => id !== target.id)) {
        this.detachRoot(name);
        this.attachRoot(name, target.path);
      }
      ids.set(root, target.id);
    }
    return ids;
  }

  /** Lets the cgroup's calls past the guard (its computer's own programs judge them). */
  govern(cgroupId: bigint): void {
    if (cgroupId !== 0n) bpf.mapUpdate(this.obj.maps.governed, encodeCgroupKey(cgroupId), encodeMarks());
  }

  /** The guard refuses the cgroup's calls again; returns the cgroup id. */
  ungovern(cgroupId: bigint): bigint {
    if (cgroupId !== 0n) bpf.mapDelete(this.obj.maps.governed, encodeCgroupKey(cgroupId));
    return cgroupId;
  }

  /** Removes every governed id that is not in `keep` (cgroups that went away while no agent watched). */
  prune(keep: ReadonlySet<bigint>): number {
    const stale = allKeys(this.obj.maps.governed, CGROUP_KEY_SIZE).filter(
      (k) => !keep.has(decodeCgroupKey(k)),
    );
    for (const k of stale) bpf.mapDelete(this.obj.maps.governed, k);
    return stale.length;
  }

  /** Whether a cgroup id is in the governed map. */
  isGoverned(cgroupId: bigint): boolean {
    return lookup(this.obj.maps.governed, encodeCgroupKey(cgroupId), 1) !== undefined;
  }

  private attachRoot(name: string, cgroupPath: string): void {
    const dir = path.join(this.rootsDir, name);
    mkdirSync(dir, { recursive: true });
    const fd = openSync(cgroupPath, 'r');
    try {
      for (const hook of GUARD_HOOKS) {
        pinCgroupLink(this.obj.guards[hook.name].fd, fd, hook.attachType, path.join(dir, hook.name));
      }
    } finally {
      closeSync(fd);
    }
  }

  private detachRoot(name: string): void {
    const dir = path.join(this.rootsDir, name);
    if (!existsSync(dir)) return;
    for (const hook of GUARD_HOOKS) unpinCgroupLink(path.join(dir, hook.name));
    rmdirSync(dir);
  }

  /** The cgroup id of each pinned guard link of a root (0n for a link whose cgroup is gone). */
  private linkedCgroups(name: string): bigint[] {
    const dir = path.join(this.rootsDir, name);
    return GUARD_HOOKS.flatMap((hook) => readCgroupLink(path.join(dir, hook.name))?.cgroupId ?? []);
  }
}
