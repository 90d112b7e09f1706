/**
 * Deferred deletion of map entries that programs may still be reading: a
 * retired policy id's rule entries, a retired learned id's addresses. Each
 * deletion runs only once an RCU grace period has passed since it was
 * queued, so no program that looked up the old id sees a half-deleted set.
 */
import { encodeU32 } from './abi.js';
import * as bpf from './libbpf.js';

export class Reclaimer {
  private pending: (() => void)[] = [];
  private sweeping: Promise<void> | undefined;
  private closed = false;

  constructor(private readonly maps: { rcu_barrier: number; barrier_inner: number }) {}

  /**
   * Queues `deletion` for after the next grace period and starts a sweep
   * soon; with `sweepSoon` false it waits for the next sweep (start-up).
   */
  retire(deletion: () => void, sweepSoon = true): void {
    this.pending.push(deletion);
    if (!sweepSoon) return;
    queueMicrotask(() => {
      this.sweep().catch(() => {});
    });
  }

  /** Runs the deletions queued before the call once a grace period has passed; resolves when they are done. */
  async sweep(): Promise<void> {
    while (this.sweeping) await this.sweeping;
    if (this.pending.length === 0 || this.closed) return;
    const batch = this.pending;
    this.pending = [];
    this.sweeping = (async () => {
      await this.waitForGracePeriod();
      for (const deletion of batch) deletion();
    })();
    try {
      await this.sweeping;
    } finally {
      this.sweeping = undefined;
    }
  }

  /** No sweep starts from now on (the maps' fds are about to close); queued deletions are dropped. */
  close(): void {
    this.closed = true;
  }

  private async waitForGracePeriod(): Promise<void> {
    // Updating a map-in-map makes the kernel wait for synchronize_rcu().
    const inner = encodeU32(this.maps.barrier_inner);
    await bpf.mapUpdateAsync(this.maps.rcu_barrier, encodeU32(0), inner);
  }
}
