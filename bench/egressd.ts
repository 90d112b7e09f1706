/**
 * What the benchmarks of the real `egressd all` (test/helpers/egressd.ts,
 * in a process of its own so that the load generator does not share its
 * event loop) use besides: api/client.ts on node:http keep-alive
 * connections, histogram quantiles between two scrapes of /metrics, the CPU
 * time of a process, percentiles.
 */

import { readFileSync } from 'node:fs';
import { Agent, type IncomingMessage, request } from 'node:http';
import { ApiUnreachableError, Client, type Reply } from '../api/client.js';
import type { Egressd } from '../test/helpers/egressd.js';

/**
 * A Response whose text() is the answer's bytes as they came: Response's
 * own body stream costs about 70 µs an answer, which a load generator of
 * 1,000 requests a second cannot spare.
 */
class HttpResponse extends Response {
  readonly #text: Promise<string>;
  constructor(res: IncomingMessage) {
    const headers = new Headers();
    for (let i = 0; i + 1 < res.rawHeaders.length; i += 2)
      headers.append(res.rawHeaders[i]!, res.rawHeaders[i + 1]!);
    super(null, { status: res.statusCode ?? 0, headers });
    this.#text = new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.once('end', () => resolve(Buffer.concat(chunks).toString()));
      res.once('error', reject);
    });
    this.#text.catch(() => {});
  }

  override text(): Promise<string> {
    return this.#text;
  }
}

/**
 * A fetch for api/client.ts over node:http: less work per request than the
 * global fetch, and at most `maxSockets` connections (further requests
 * queue). Fails with ETIMEDOUT when the whole answer is not in within
 * `timeoutMs`.
 */
function httpFetch(agent: Agent, timeoutMs: number): typeof fetch {
  return ((input: string | URL, init: RequestInit = {}) =>
    new Promise<Response>((resolve, reject) => {
      const req = request(
        input,
        { method: init.method ?? 'GET', agent, headers: init.headers as Record<string, string> },
        (res) => {
          res.once('end', () => clearTimeout(timer));
          resolve(new HttpResponse(res));
        },
      );
      const timer = setTimeout(() => {
        req.destroy(Object.assign(new Error(`timed out after ${timeoutMs} ms`), { code: 'ETIMEDOUT' }));
      }, timeoutMs);
      req.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      req.end(init.body as string | undefined);
    })) as typeof fetch;
}

/** api/client.ts for egressd's admin, on at most `maxSockets` keep-alive connections. */
export class BenchClient extends Client {
  private readonly agent: Agent;

  constructor(egressd: Egressd, maxSockets: number, timeoutMs = 120_000) {
    const agent = new Agent({ keepAlive: true, maxSockets });
    super({ baseUrl: egressd.origin, apiKey: egressd.adminKey, fetch: httpFetch(agent, timeoutMs) });
    this.agent = agent;
  }

  /** PUT of a policy serialized ahead of time (no JSON work on the clock), ?wait=`wait`. */
  putPolicy(id: string, json: string, wait: number): Promise<Reply> {
    return this.send('PUT', `/api/v1/computers/${encodeURIComponent(id)}/network-policy`, {
      rawBody: json,
      headers: { 'content-type': 'application/json' },
      query: { wait },
    });
  }

  close(): void {
    this.agent.destroy();
  }
}

/** What a failed request ran into, without its URL: 'timeout', a system error code, or the message. */
export function failure(err: unknown): string {
  const e = (err ?? {}) as { code?: unknown; message?: unknown };
  if (e.code === 'ETIMEDOUT') return 'timeout';
  if (typeof e.code === 'string' && e.code !== '') return e.code;
  return err instanceof ApiUnreachableError ? failure(err.cause) : String(e.message ?? err);
}

/**
 * Quantiles of a Prometheus histogram between two scrapes, interpolated
 * linearly within the bucket as Prometheus's histogram_quantile() does (so
 * only as fine as the buckets), plus count and mean of the observations in
 * between.
 */
export function histogramDelta(
  before: Map<string, number>,
  after: Map<string, number>,
  name: string,
  quantiles: number[],
): { count: number; mean: number; quantiles: number[] } {
  const buckets: { le: number; n: number }[] = [];
  for (const [key, value] of after) {
    const m = new RegExp(`^${name}_bucket\\{le="([^"]+)"\\}$`).exec(key);
    if (!m) continue;
    const le = m[1] === '+Inf' ? Number.POSITIVE_INFINITY : Number(m[1]);
    buckets.push({ le, n: value - (before.get(key) ?? 0) });
  }
  buckets.sort((a, b) => a.le - b.le);
  const count = (after.get(`${name}_count`) ?? 0) - (before.get(`${name}_count`) ?? 0);
  const sum = (after.get(`${name}_sum`) ?? 0) - (before.get(`${name}_sum`) ?? 0);
  const quantile = (q: number) => {
    const rank = q * count;
    const i = buckets.findIndex((b) => b.n >= rank);
    const bucket = buckets[i];
    if (count === 0 || !bucket) return Number.NaN;
    const lower = buckets[i - 1] ?? { le: 0, n: 0 };
    // Past the last finite bound: that bound, as histogram_quantile() answers.
    if (bucket.le === Number.POSITIVE_INFINITY) return lower.le;
    return lower.le + ((bucket.le - lower.le) * (rank - lower.n)) / Math.max(1, bucket.n - lower.n);
  };
  return { count, mean: count > 0 ? sum / count : Number.NaN, quantiles: quantiles.map(quantile) };
}

/** User + system CPU time of a process so far, in seconds (from /proc/PID/stat; USER_HZ 100). */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** Nearest-rank percentile of `values` (NaN when empty). */
export function percentile(values: number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((sorted.length * p) / 100) - 1)] ?? Number.NaN;
}

/** A number rounded to `digits` decimals (for tables and JSON). */
export function round(x: number, digits = 2): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}
