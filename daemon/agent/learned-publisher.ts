/**
 * What the DNS proxy learned, on its way to Redis (for the API and deny
 * events): batched for half a second; kept for the next batch while Redis is
 * away (the kernel has the addresses either way).
 */
import ipaddr from 'ipaddr.js';
import type { Store } from '../../store/store.js';

type LearnedOut = { name: string; address: string; expiresAt: number };

export class LearnedPublisher {
  private pending = new Map<string, LearnedOut[]>();
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly store: Pick<Store, 'putLearned'>) {}

  add(id: string, name: string, addresses: number[][], ttlSeconds: number): void {
    const expiresAt = Date.now() + ttlSeconds * 1000;
    const list = this.pending.get(id) ?? [];
    for (const bytes of addresses)
      list.push({ name, address: ipaddr.fromByteArray(bytes).toString(), expiresAt });
    this.pending.set(id, list);
    this.timer ??= setTimeout(() => {
      this.timer = undefined;
      void this.publish();
    }, 500);
  }

  close(): void {
    clearTimeout(this.timer);
  }

  private async publish(): Promise<void> {
    const batch = this.pending;
    this.pending = new Map();
    for (const [id, entries] of batch) {
      try {
        // Dropped by the store if the computer was deleted meanwhile (see Store.putLearned).
        await this.store.putLearned(id, entries);
      } catch {
        this.pending.set(id, [...(this.pending.get(id) ?? []), ...entries]);
      }
    }
  }
}
