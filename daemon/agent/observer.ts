/**
 * Observations (audit mode's suggested allowlist): every few seconds, what
 * the computers' calls went to since the last look — the kernel's "observed"
 * map counts each destination (let through: allowed, or refused in audit) —
 * named where the computer's DNS taught the address, merged into Redis per
 * computer (store/observations.ts keeps the most recently seen
 * MAX_OBSERVATIONS of each).
 *
 * Names: the hostname the computer's DNS answer gave an address, whether or
 * not its policy lists the name (the DNS proxy tells resolved()), else the
 * name it was learned for; else the address. At most NAMES_PER_COMPUTER
 * addresses' names are kept per computer (the oldest go first).
 *
 * Counts are the kernel's since this process last looked: an agent that
 * starts again counts what the map holds once more (the map outlives it);
 * first and last seen stay right.
 */
import type { Logger } from 'pino';
import type { Observation, Store } from '../../store/store.js';
import { formatAddress } from '../events.js';
import type { Enforcer, ObservedEntry } from '../kernel/enforcer.js';

const PROTOCOLS: Record<number, Observation['protocol']> = { 6: 'tcp', 17: 'udp' };
const NAMES_PER_COMPUTER = 4096;

export class Observer {
  /** The kernel's count of each destination when last read. */
  private readonly counted = new Map<string, bigint>();
  /** Per computer, address (bytes joined) → the name an answer gave it. */
  private readonly names = new Map<string, Map<string, string>>();
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> = Promise.resolve();
  /** CLOCK_MONOTONIC ns → wall clock ms: the kernel stamps with the former. */
  private readonly clockOffsetMs = Date.now() - Number(process.hrtime.bigint() / 1_000_000n);

  constructor(
    private readonly enforcer: Enforcer,
    private readonly store: Pick<Store, 'putObservations'>,
    private readonly log: Logger,
    private readonly intervalMs = 5000,
  ) {}

  /** A DNS answer for computer `id`: `name` resolved to `addresses` (bytes). */
  resolved(id: string, name: string, addresses: readonly number[][]): void {
    const names = this.names.get(id) ?? new Map<string, string>();
    this.names.set(id, names);
    for (const a of addresses) {
      const key = a.join('.');
      names.delete(key); // re-inserted last: the newest
      names.set(key, name);
    }
    for (const key of names.keys()) {
      if (names.size <= NAMES_PER_COMPUTER) break;
      names.delete(key);
    }
  }

  start(): void {
    this.timer ??= setInterval(() => void this.flush(), this.intervalMs).unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    await this.flush();
  }

  /** Reads the map and writes what is new to Redis (one flush at a time). */
  flush(): Promise<void> {
    this.flushing = this.flushing.then(() => this.flushNow());
    return this.flushing;
  }

  private async flushNow(): Promise<void> {
    const byComputer = new Map<string, Map<string, Observation>>();
    const live = new Set<string>();
    for (const e of this.enforcer.observed()) {
      const key = `${e.cgroupId} ${e.address.join('.')} ${e.port} ${e.protocol}`;
      live.add(key);
      const before = this.counted.get(key) ?? 0n;
      this.counted.set(key, e.count);
      // Evicted and seen again since: the kernel's count started over.
      const added = e.count >= before ? e.count - before : e.count;
      const protocol = PROTOCOLS[e.protocol];
      const computer = this.enforcer.computerAt(e.cgroupId);
      if (added === 0n || !protocol || !computer) continue;
      this.add(byComputer, computer, e, protocol, Number(added));
    }
    for (const key of this.counted.keys()) if (!live.has(key)) this.counted.delete(key);
    // Names of computers this process no longer holds (detached, deleted) go.
    for (const id of this.names.keys())
      if (this.enforcer.attachedCgroupId(id) === undefined) this.names.delete(id);
    await Promise.all(
      [...byComputer].map(([id, seen]) =>
        this.store.putObservations(id, [...seen.values()]).catch((err: Error) => {
          this.log.warn(
            { computer: id, lost: seen.size, err: err.message },
            'observations not stored (Redis)',
          );
        }),
      ),
    );
  }

  /** One destination, under the name the computer's DNS gave it (several addresses of a name add up). */
  private add(
    byComputer: Map<string, Map<string, Observation>>,
    computer: string,
    e: ObservedEntry,
    protocol: Observation['protocol'],
    count: number,
  ): void {
    const host =
      this.names.get(computer)?.get(e.address.join('.')) ??
      this.enforcer.nameOf(computer, e.address) ??
      formatAddress(e.address);
    const firstSeen = this.clockOffsetMs + Number(e.firstNs / 1_000_000n);
    const lastSeen = this.clockOffsetMs + Number(e.lastNs / 1_000_000n);
    const seen = byComputer.get(computer) ?? new Map<string, Observation>();
    byComputer.set(computer, seen);
    const field = `${host} ${e.port} ${protocol}`;
    const o = seen.get(field);
    if (!o) {
      seen.set(field, { host, port: e.port, protocol, count, firstSeen, lastSeen });
      return;
    }
    o.count += count;
    o.firstSeen = Math.min(o.firstSeen, firstSeen);
    o.lastSeen = Math.max(o.lastSeen, lastSeen);
  }
}
