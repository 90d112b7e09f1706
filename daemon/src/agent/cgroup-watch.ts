/**
 * Tells the agent when a computer's cgroup appears or disappears, with
 * inotify (fs.watch) on the deepest existing ancestor of each path: no
 * polling. cgroup2 reports mkdir and rmdir of child directories as events
 * on the parent.
 */
import { existsSync, type FSWatcher, watch } from 'node:fs';
import path from 'node:path';

export class CgroupWatcher {
  /** Computer id → absolute cgroup path. */
  private readonly paths = new Map<string, string>();
  /** Last known existence of each id's path. */
  private readonly present = new Map<string, boolean>();
  private readonly watchers = new Map<string, FSWatcher>();
  private scheduled = false;
  private closed = false;

  /** `onChange(id, exists)` runs after a watched path appeared or disappeared. */
  constructor(
    private readonly root: string,
    private readonly onChange: (id: string, exists: boolean) => void,
  ) {}

  /** Watches `fullPath` for the computer `id` (replacing an earlier path). */
  track(id: string, fullPath: string): void {
    this.paths.set(id, fullPath);
    this.present.set(id, existsSync(fullPath));
    this.rewatch();
  }

  untrack(id: string): void {
    this.paths.delete(id);
    this.present.delete(id);
    this.rewatch();
  }

  tracked(): string[] {
    return [...this.paths.keys()];
  }

  close(): void {
    this.closed = true;
    for (const w of this.watchers.values()) w.close();
    this.watchers.clear();
  }

  /** The directories to watch: each path's parent if it exists, else its deepest existing ancestor. */
  private wanted(): Set<string> {
    const dirs = new Set<string>();
    for (const full of this.paths.values()) {
      let dir = path.dirname(full);
      while (dir.length > this.root.length && !existsSync(dir)) dir = path.dirname(dir);
      dirs.add(dir);
      // Also the path itself when it exists: a nested cgroup below it is not our business,
      // but its own removal shows on the parent, which is already watched.
    }
    return dirs;
  }

  private rewatch(): void {
    if (this.closed) return;
    const wanted = this.wanted();
    for (const [dir, w] of this.watchers) {
      if (!wanted.has(dir)) {
        w.close();
        this.watchers.delete(dir);
      }
    }
    for (const dir of wanted) {
      if (this.watchers.has(dir)) continue;
      try {
        const w = watch(dir, { persistent: false }, () => this.schedule());
        w.on('error', () => {
          w.close();
          this.watchers.delete(dir);
          this.schedule();
        });
        this.watchers.set(dir, w);
      } catch {
        // The directory vanished between the check and the watch: look again.
        this.schedule();
      }
    }
  }

  /** Coalesces bursts of events (a thousand sandboxes ending at once) into one check. */
  private schedule(): void {
    if (this.scheduled || this.closed) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.check();
    });
  }

  private check(): void {
    if (this.closed) return;
    for (const [id, full] of this.paths) {
      const now = existsSync(full);
      if (now !== this.present.get(id)) {
        this.present.set(id, now);
        this.onChange(id, now);
      }
    }
    this.rewatch();
  }
}
