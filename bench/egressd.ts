/**
 * The real `egressd all` (the API in its main process, the agent in a child
 * process of its own) for the benchmarks, in a process of its own so that the
 * load generator does not share its event loop; an HTTP client with keep-alive connections and timestamps; the
 * Prometheus text of /metrics; CPU time of a process from /proc.
 *
 * The process is started with the test world's pin directory, a redis-server
 * of test/helpers/redis.ts, a temporary state directory, a free loopback
 * port and a DNS upstream that is nothing (127.0.0.1:9: no benchmark asks
 * DNS, and nothing may leave this host). stop() ends it by its own pid
 * (SIGTERM, then SIGKILL) and removes the state directory; an exit hook does
 * the same if the benchmark dies first.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parsePrometheus } from '../test/helpers/prometheus.js';
import { REPO_ROOT, type World } from '../test/helpers/world.js';

const CLI = path.join(REPO_ROOT, 'dist/cli/main.js');
export const BENCH_ADMIN_KEY = 'bench-admin-key-0123456789';

export interface EgressdOptions {
  world: World;
  redisUrl: string;
  node: string;
  /** More environment for egressd (EGRESSD_MAX_RULES, EGRESSD_BODY_LIMIT, ...). */
  env?: Record<string, string>;
  /** Node options before the script (e.g. --cpu-prof); the agent process gets them too. */
  nodeArgs?: string[];
}

export interface RunningEgressd {
  /** The main process (the API). */
  pid: number;
  /** The agent process's pid, as it is now (egressd all restarts it if it dies). */
  agentPid(): number | undefined;
  /** http://127.0.0.1:PORT */
  origin: string;
  child: ChildProcess;
  /** Its stderr so far (the last 64 KiB). */
  stderr(): string;
  /** SIGTERM (SIGKILL after 10 s); removes the state directory. Idempotent. */
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  const s = createServer().listen(0, '127.0.0.1');
  await once(s, 'listening');
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

function alive(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

/** Starts `egressd all`; resolves once it says it is running and /readyz answers 200 (within 30 s). */
export async function startEgressd(opts: EgressdOptions): Promise<RunningEgressd> {
  const port = await freePort();
  const stateDir = mkdtempSync(path.join(tmpdir(), 'egressd-bench-state-'));
  const child = spawn(process.execPath, [...(opts.nodeArgs ?? []), CLI, 'all'], {
    env: {
      PATH: process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin',
      REDIS_URL: opts.redisUrl,
      EGRESSD_ADMIN_KEY: BENCH_ADMIN_KEY,
      EGRESSD_STATE_DIR: stateDir,
      EGRESSD_BPFFS_DIR: opts.world.pinDir,
      EGRESSD_LISTEN: `127.0.0.1:${port}`,
      EGRESSD_NODE: opts.node,
      EGRESSD_CGROUP_ROOTS: opts.world.cgroupRelative(),
      EGRESSD_LOG_LEVEL: 'warn',
      EGRESSD_DNS_UPSTREAM: '127.0.0.1:9',
      ...opts.env,
    },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-65536);
  });
  const onExit = () => {
    if (child.pid !== undefined && alive(child)) process.kill(child.pid, 'SIGKILL');
    rmSync(stateDir, { recursive: true, force: true });
  };
  process.on('exit', onExit);
  let stopping: Promise<void> | undefined;
  const stop = () => {
    stopping ??= (async () => {
      if (child.pid !== undefined && alive(child)) {
        const exited = once(child, 'exit');
        process.kill(child.pid, 'SIGTERM');
        const timer = setTimeout(() => {
          if (child.pid !== undefined && alive(child)) process.kill(child.pid, 'SIGKILL');
        }, 10_000);
        await exited;
        clearTimeout(timer);
      }
      rmSync(stateDir, { recursive: true, force: true });
      process.off('exit', onExit);
    })();
    return stopping;
  };
  const origin = `http://127.0.0.1:${port}`;
  try {
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (!alive(child)) throw new Error(`egressd exited (${child.exitCode ?? child.signalCode}): ${stderr}`);
      const ready = await fetch(`${origin}/readyz`).then(
        (r) => r.status === 200,
        () => false,
      );
      if (ready && stderr.includes('running')) break;
      if (Date.now() > deadline) throw new Error(`egressd did not become ready in 30 s: ${stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  } catch (err) {
    await stop();
    throw err;
  }
  const agentPid = () =>
    childPids(child.pid ?? -1).find((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes('agent');
      } catch {
        return false;
      }
    });
  return { pid: child.pid ?? -1, agentPid, origin, child, stderr: () => stderr, stop };
}

/** The direct children of a process, from /proc ([] once it is gone). */
function childPids(pid: number): number[] {
  try {
    return readdirSync(`/proc/${pid}/task`).flatMap((task) =>
      readFileSync(`/proc/${pid}/task/${task}/children`, 'utf8').split(' ').filter(Boolean).map(Number),
    );
  } catch {
    return [];
  }
}

export interface Reply {
  status: number;
  body: Buffer;
  /** process.hrtime.bigint() when the request was handed to the socket layer. */
  sentAt: bigint;
  /** process.hrtime.bigint() when the status line and headers arrived. */
  headersAt: bigint;
}

/**
 * An HTTP/1.1 client on keep-alive connections to one origin (node:http,
 * less overhead per request than fetch), with the admin key.
 */
export class Client {
  readonly agent: Agent;
  constructor(
    readonly origin: string,
    maxSockets = 64,
  ) {
    this.agent = new Agent({ keepAlive: true, maxSockets });
  }

  /** One request; rejects on a socket error or after `timeoutMs`. */
  send(method: string, urlPath: string, body?: string | Buffer, timeoutMs = 120_000): Promise<Reply> {
    return new Promise((resolve, reject) => {
      const sentAt = process.hrtime.bigint();
      const req = request(
        `${this.origin}${urlPath}`,
        {
          method,
          agent: this.agent,
          headers: {
            authorization: `Bearer ${BENCH_ADMIN_KEY}`,
            ...(body === undefined
              ? {}
              : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }),
          },
        },
        (res) => {
          const headersAt = process.hrtime.bigint();
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.once('end', () => {
            clearTimeout(timer);
            resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks), sentAt, headersAt });
          });
          res.once('error', (err) => {
            clearTimeout(timer);
            reject(err);
          });
        },
      );
      const timer = setTimeout(() => {
        req.destroy(new Error(`timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      req.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      req.end(body);
    });
  }

  close(): void {
    this.agent.destroy();
  }
}

/** /metrics of egressd (with the admin key) as name{labels} → value. */
export async function metrics(origin: string): Promise<Map<string, number>> {
  const r = await fetch(`${origin}/metrics`, { headers: { authorization: `Bearer ${BENCH_ADMIN_KEY}` } });
  if (!r.ok) throw new Error(`GET ${origin}/metrics: ${r.status} ${await r.text()}`);
  return parsePrometheus(await r.text());
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
