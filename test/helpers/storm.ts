/**
 * A bounded storm of policy PUTs for the multi-host tests: `rate` PUTs a
 * second, in ticks of 50 ms, round-robin over `computers`, taking turns
 * over the API replicas, for at least `minMs` and until `until()` says so
 * (checked each tick) or `maxMs` has passed. At most `maxInFlight` PUTs
 * are open at once (a tick beyond that skips and counts them) and each
 * one is given up after `requestTimeoutMs`: a stalled store never piles up
 * unbounded work. Every PUT is recorded with its answer: the status, the
 * version of a 2xx, the error code otherwise.
 *
 * Policy variants: PUT n of computer c allows exactly one world target,
 * VARIANTS[(n + c) % VARIANTS.length], so that consecutive policies of a
 * computer differ in what a real connect reaches. A computer's PUTs take
 * turns over the API replicas.
 */

import { Client } from '../../api/client.js';
import { ADMIN_KEY } from './egressd.js';

/** Targets a policy of the storm allows: address and port of the world's servers (world.ts). */
export const VARIANTS: readonly (readonly [string, number])[] = [
  ['192.0.2.1', 80],
  ['192.0.2.2', 443],
  ['198.51.100.1', 8080],
  ['192.0.2.1', 443],
  ['192.0.2.2', 8080],
  ['198.51.100.1', 80],
  ['192.0.2.1', 8080],
  ['192.0.2.2', 80],
  ['198.51.100.1', 443],
];

export function variantPolicy(variant: number) {
  const [host, port] = VARIANTS[variant % VARIANTS.length] as readonly [string, number];
  return { mode: 'allowlist', rules: [{ host, port, protocol: 'tcp' }] };
}

export interface StormPut {
  computer: string;
  /** The computer's n-th PUT of the storm. */
  n: number;
  variant: number;
  /** Which API replica (index). */
  api: number;
  sentAt: number;
  doneAt: number;
  /** 0: no answer (connection failed or timed out). */
  status: number;
  /** The stored version, for a 2xx. */
  version?: number;
  code?: string;
}

export interface StormOptions {
  origins: string[];
  computers: string[];
  rate: number;
  minMs: number;
  maxMs: number;
  /** Checked each tick once `minMs` have passed, with the PUTs so far: true ends the storm. */
  until?: (puts: readonly StormPut[]) => boolean;
  maxInFlight?: number;
  requestTimeoutMs?: number;
  /** Called once per tick with the ms since the start (the test's own schedule: a kill...). */
  onTick?: (elapsedMs: number) => void;
}

export interface StormResult {
  puts: StormPut[];
  /** When a tick skipped a PUT (the in-flight cap was reached). */
  skipped: number[];
  startedAt: number;
  endedAt: number;
}

const TICK_MS = 50;

export async function runStorm(opts: StormOptions): Promise<StormResult> {
  const timeout = opts.requestTimeoutMs ?? 10_000;
  const clients = opts.origins.map(
    (baseUrl) =>
      new Client({
        baseUrl,
        apiKey: ADMIN_KEY,
        fetch: (url, init) => fetch(url, { ...init, signal: AbortSignal.timeout(timeout) }),
      }),
  );
  const maxInFlight = opts.maxInFlight ?? 100;
  const perTick = Math.max(1, Math.round((opts.rate * TICK_MS) / 1000));
  const counts = new Map<string, number>();
  const puts: StormPut[] = [];
  const open = new Set<Promise<void>>();
  const skipped: number[] = [];
  let next = 0;
  const startedAt = Date.now();

  const put = (computer: string, index: number) => {
    const n = counts.get(computer) ?? 0;
    counts.set(computer, n + 1);
    // Each computer's PUTs take turns over the replicas.
    const api = (n + index) % clients.length;
    const record: StormPut = {
      computer,
      n,
      variant: (n + index) % VARIANTS.length,
      api,
      sentAt: Date.now(),
      doneAt: 0,
      status: 0,
    };
    puts.push(record);
    const p = (clients[api] as Client)
      .send('PUT', `/api/v1/computers/${computer}/network-policy`, {
        query: { wait: 0 },
        body: variantPolicy(record.variant),
      })
      .then(
        (r) => {
          record.status = r.status;
          const body = r.body as { data?: { version?: number }; error?: { code?: string } } | undefined;
          if (r.status >= 200 && r.status < 300) record.version = body?.data?.version;
          else record.code = body?.error?.code;
        },
        (err: Error) => {
          record.code = err.name;
        },
      )
      .finally(() => {
        record.doneAt = Date.now();
        open.delete(p);
      });
    open.add(p);
  };

  for (let tick = 0; ; tick++) {
    const elapsed = Date.now() - startedAt;
    if (elapsed >= opts.maxMs || (elapsed >= opts.minMs && (opts.until?.(puts) ?? true))) break;
    opts.onTick?.(elapsed);
    for (let i = 0; i < perTick; i++) {
      if (open.size >= maxInFlight) {
        skipped.push(Date.now());
        continue;
      }
      const index = next % opts.computers.length;
      put(opts.computers[index] as string, index);
      next++;
    }
    // The next tick on the schedule, not 50 ms after this one's work.
    const wait = startedAt + (tick + 1) * TICK_MS - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }
  const endedAt = Date.now();
  await Promise.all([...open]);
  return { puts, skipped, startedAt, endedAt };
}
