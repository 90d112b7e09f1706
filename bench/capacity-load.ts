/**
 * What bench/capacity.ts drives and measures with: the real `egressd api`
 * as a child process (node dist/cli/main.js api), an open-loop PUT
 * generator on node:http keep-alive connections, and CPU counters (a
 * process and its children from /proc, Redis's own INFO cpu, the whole
 * machine from /proc/stat).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { Agent, request } from 'node:http';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import type { Redis } from 'ioredis';
import { freePort } from '../test/helpers/redis.js';
import { cpuSeconds, percentile, round } from './egressd.js';

export const ADMIN_KEY = 'bench-admin-key';
const CLI = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'cli', 'main.js');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Epoch milliseconds with sub-millisecond precision, comparable across this machine's processes. */
export const nowMs = () => performance.timeOrigin + performance.now();

export interface Api {
  origin: string;
  process: ChildProcess;
  pid: number;
}

/** `egressd api` on a free loopback port; resolves once it answers /readyz (bounded: 15 s). */
export async function startApi(redisUrl: string, minReplicas: number, workers: number): Promise<Api> {
  const port = await freePort();
  const child = spawn(process.execPath, [CLI, 'api'], {
    env: {
      PATH: process.env['PATH'] ?? '',
      REDIS_URL: redisUrl,
      EGRESSD_ADMIN_KEY: ADMIN_KEY,
      EGRESSD_LISTEN: `127.0.0.1:${port}`,
      EGRESSD_CGROUP_ROOTS: 'egressd',
      EGRESSD_API_WORKERS: String(workers),
      EGRESSD_REDIS_MIN_REPLICAS: String(minReplicas),
      EGRESSD_LOG_LEVEL: 'warn',
    },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const origin = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 150; i++) {
    if (child.exitCode !== null) break;
    const ok = await fetch(`${origin}/readyz`).then(
      (r) => r.ok,
      () => false,
    );
    // Every worker listens once the primary answers (it waits for all before it says it is up).
    if (ok) return { origin, process: child, pid: child.pid ?? 0 };
    await sleep(100);
  }
  await stopApi({ origin, process: child, pid: child.pid ?? 0 });
  throw new Error(`egressd api (workers ${workers}, min replicas ${minReplicas}) did not answer within 15 s`);
}

export async function stopApi(api: Api): Promise<void> {
  const p = api.process;
  if (p.exitCode !== null || p.signalCode !== null) return;
  const exited = once(p, 'exit');
  process.kill(api.pid, 'SIGTERM');
  const timer = setTimeout(() => process.kill(api.pid, 'SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

/** CPU seconds of a process and its direct children (the API's cluster workers). */
export function treeCpuSeconds(pid: number): number {
  let children: number[] = [];
  try {
    children = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).map(Number);
  } catch {
    // no children file (kernel without CONFIG_PROC_CHILDREN): the process alone
  }
  let total = cpuSeconds(pid);
  for (const c of children.filter((n) => n > 0)) {
    try {
      total += cpuSeconds(c);
    } catch {
      // ended meanwhile
    }
  }
  return total;
}

/** used_cpu_sys + used_cpu_user of a redis-server (INFO cpu), seconds. */
export async function redisCpuSeconds(redis: Redis): Promise<number> {
  const info = await redis.info('cpu');
  const field = (f: string) => Number(new RegExp(`^${f}:([\\d.]+)`, 'm').exec(info)?.[1] ?? Number.NaN);
  return field('used_cpu_sys') + field('used_cpu_user');
}

/** Busy and total jiffies of the whole machine (/proc/stat), for the share of its cores in use. */
export function machineTicks(): { busy: number; total: number } {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
  return { busy: total - (f[3] ?? 0) - (f[4] ?? 0), total };
}

/** One PUT's outcome. */
export interface Outcome {
  id: string;
  /** The version the answer names (ETag); 0 when none. */
  version: number;
  status: number;
  /** From the request's scheduled send to the answer's headers (so a client falling behind counts). */
  latencyMs: number;
  /** When the answer's headers came, epoch ms. */
  answeredAt: number;
  /** From the start of the load to the answer, ms. */
  atMs: number;
}

export interface LoadResult {
  outcomes: Outcome[];
  /** Requests that got no answer: by error code ('timeout' after the client's timeout). */
  failures: Record<string, number>;
  issued: number;
  issueSeconds: number;
}

/**
 * Open loop: `rate` PUTs a second for `seconds`, request k at start + k/rate
 * whatever the answers before it did, PUT `<origin>/api/v1/computers/<id>/
 * network-policy?wait=0` of `put(k)`; `atIssued` runs when the last one is
 * sent (the CPU window ends there). Each request gives up after `timeoutMs`.
 */
export async function openLoop(
  origin: string,
  rate: number,
  seconds: number,
  put: (k: number) => { id: string; body: string },
  atIssued: () => Promise<void>,
  timeoutMs = 10_000,
): Promise<LoadResult> {
  const agent = new Agent({ keepAlive: true, maxSockets: 256 });
  const url = new URL(origin);
  const total = Math.round(rate * seconds);
  const outcomes: Outcome[] = [];
  const failures: Record<string, number> = {};
  const pending: Promise<void>[] = [];
  const start = nowMs();
  const one = (k: number) => {
    const scheduled = start + (k * 1000) / rate;
    const { id, body } = put(k);
    return new Promise<void>((resolve) => {
      const req = request(
        {
          host: url.hostname,
          port: url.port,
          method: 'PUT',
          path: `/api/v1/computers/${encodeURIComponent(id)}/network-policy?wait=0`,
          agent,
          headers: {
            authorization: `Bearer ${ADMIN_KEY}`,
            'content-type': 'application/json',
            'content-length': Buffer.byteLength(body),
          },
        },
        (res) => {
          const answeredAt = nowMs();
          const etag = String(res.headers.etag ?? '').replace(/\D/g, '');
          outcomes.push({
            id,
            version: Number(etag || 0),
            status: res.statusCode ?? 0,
            latencyMs: answeredAt - scheduled,
            answeredAt,
            atMs: answeredAt - start,
          });
          res.resume();
          res.once('end', () => resolve());
          res.once('error', () => resolve());
        },
      );
      req.setTimeout(timeoutMs, () =>
        req.destroy(Object.assign(new Error('timeout'), { code: 'ETIMEDOUT' })),
      );
      req.once('error', (err: Error & { code?: string }) => {
        const key = err.code === 'ETIMEDOUT' ? 'timeout' : (err.code ?? err.message);
        failures[key] = (failures[key] ?? 0) + 1;
        resolve();
      });
      req.end(body);
    });
  };
  let issued = 0;
  while (issued < total) {
    const due = Math.min(total, Math.floor(((nowMs() - start) * rate) / 1000) + 1);
    while (issued < due) pending.push(one(issued++));
    await sleep(1);
  }
  const issueSeconds = (nowMs() - start) / 1000;
  await atIssued();
  await Promise.all(pending);
  agent.destroy();
  return { outcomes, failures, issued, issueSeconds };
}

/** The figures of one load: rate answered 2xx, latency, errors. */
export function summarize(rate: number, r: LoadResult) {
  const ok = r.outcomes.filter((o) => o.status >= 200 && o.status < 300);
  const lat = ok.map((o) => o.latencyMs);
  const lastMs = Math.max(r.issueSeconds * 1000, ...r.outcomes.map((o) => o.atMs));
  const statuses: Record<string, number> = {};
  for (const o of r.outcomes) statuses[o.status] = (statuses[o.status] ?? 0) + 1;
  const failed = Object.values(r.failures).reduce((a, b) => a + b, 0);
  return {
    target_per_s: rate,
    issued: r.issued,
    offered_per_s: round(r.issued / r.issueSeconds, 0),
    // 2xx answers over the time from the start to the last answer: the offered rate when the
    // service keeps up, its service rate when a backlog grows.
    achieved_per_s: round((1000 * ok.length) / lastMs, 0),
    p50_ms: round(percentile(lat, 50)),
    p99_ms: round(percentile(lat, 99)),
    max_ms: round(lat.length ? Math.max(...lat) : Number.NaN),
    errors: r.outcomes.length - ok.length + failed,
    statuses: JSON.stringify({ ...statuses, ...r.failures }),
  };
}
