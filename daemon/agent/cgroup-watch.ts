/**
 * Tells the agent when a computer's cgroup appears or disappears, with
 * inotify (fs.watch) on the parent of each path, or on its deepest existing
 * ancestor while the parent is missing: no polling. cgroup2 reports mkdir
 * and rmdir of child directories as events on the parent. Each watched
 * directory knows the ids below it, so an event costs one stat per id there,
 * and tracking N computers costs O(N).
 *
 * A path is tracked by the cgroup at it (its inode number, the cgroup id),
 * not only by its existence: an rmdir and mkdir that land between two
 * checks leave the path there, but with another cgroup, which is reported
 * as a replacement.
 */
import { existsSync, type FSWatcher, statSync, watch } from 'node:fs';
import path from 'node:path';

/** What changed at a tracked path. */
export type CgroupChange = 'appeared' | 'gone' | 'replaced';

/** The cgroup id (inode number) at a path, or 0n when there is none. */
export function cgroupIdAt(fullPath: string): bigint {
  const stat = statSync(fullPath, { bigint: true, throwIfNoEntry: false });
  return stat?.isDirectory() ? stat.ino : 0n;
}

interface Tracked {
  path: string;
  /** The cgroup id seen there last; 0n: none. */
  cgroupId: bigint;
  /** The directory whose watcher covers this id. */
  dir: string;
}

export class CgroupWatcher {
  private readonly tracked = new Map<string, Tracked>();
  /** Watched directory → its watcher and the ids it covers. */
  private readonly dirs = new Map<string, { watcher: FSWatcher | undefined; ids: Set<string> }>();
  private readonly dirty = new Set<string>();
  private scheduled = false;
  private closed = false;

  /** `onChange(id, change)` runs after a watched path appeared, disappeared or holds another cgroup. */
  constructor(
    private readonly root: string,
    private readonly onChange: (id: string, change: CgroupChange) => void,
  ) {}

  /** Watches `fullPath` for the computer `id` (replacing an earlier path). */
  track(id: string, fullPath: string): void {
    const old = this.tracked.get(id);
    if (old?.path === fullPath) return;
    if (old) this.unwatch(id, old.dir);
    const entry: Tracked = { path: fullPath, cgroupId: cgroupIdAt(fullPath), dir: '' };
    this.tracked.set(id, entry);
    this.place(id, entry);
  }

  untrack(id: string): void {
    const old = this.tracked.get(id);
    if (!old) return;
    this.tracked.delete(id);
    this.unwatch(id, old.dir);
  }

  close(): void {
    this.closed = true;
    for (const d of this.dirs.values()) d.watcher?.close();
    this.dirs.clear();
  }

  /** Watches the parent of the id's path, or its deepest existing ancestor. */
  private place(id: string, entry: Tracked): void {
    let dir = path.dirname(entry.path);
    while (dir.length > this.root.length && !existsSync(dir)) dir = path.dirname(dir);
    entry.dir = dir;
    let d = this.dirs.get(dir);
    if (!d) {
      d = { watcher: this.open(dir), ids: new Set() };
      this.dirs.set(dir, d);
    }
    d.ids.add(id);
  }

  private unwatch(id: string, dir: string): void {
    const d = this.dirs.get(dir);
    if (!d) return;
    d.ids.delete(id);
    if (d.ids.size === 0) {
      d.watcher?.close();
      this.dirs.delete(dir);
    }
  }

  private open(dir: string): FSWatcher | undefined {
    if (this.closed) return undefined;
    try {
      const w = watch(dir, { persistent: false }, () => this.schedule(dir));
      w.on('error', () => this.schedule(dir));
      return w;
    } catch {
      // Gone between the check and the watch: look again.
      this.schedule(dir);
      return undefined;
    }
  }

  /** Coalesces bursts of events (a thousand sandboxes ending at once) into one check per directory. */
  private schedule(dir: string): void {
    if (this.closed) return;
    this.dirty.add(dir);
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      const dirs = [...this.dirty];
      this.dirty.clear();
      for (const d of dirs) this.check(d);
    });
  }

  private check(dir: string): void {
    const d = this.dirs.get(dir);
    if (!d || this.closed) return;
    const dirGone = !existsSync(dir);
    for (const id of [...d.ids]) {
      const entry = this.tracked.get(id);
      if (!entry) continue;
      const now = cgroupIdAt(entry.path);
      // Re-place: deeper when missing ancestors appeared, higher when this directory went away.
      if (dirGone || entry.dir !== path.dirname(entry.path)) {
        this.unwatch(id, entry.dir);
        this.place(id, entry);
      }
      if (now !== entry.cgroupId) {
        const before = entry.cgroupId;
        entry.cgroupId = now;
        this.onChange(id, now === 0n ? 'gone' : before === 0n ? 'appeared' : 'replaced');
      }
    }
    if (dirGone) {
      const stale = this.dirs.get(dir);
      stale?.watcher?.close();
      if (stale && stale.ids.size === 0) this.dirs.delete(dir);
    }
  }
}
