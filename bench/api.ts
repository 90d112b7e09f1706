/**
 * API throughput on this machine: a real redis-server, the API server as a
 * child process (node dist/api/src/server.js) on 127.0.0.1, and autocannon
 * in this process. Measures GET of a policy and PUT ?wait=0 (each PUT a real
 * change: the rules' port varies, so every request writes a new version and
 * a change record), spread over a set of computers. Prints a table and JSON.
 *
 *   node dist/bench/api.js [--duration S] [--connections N] [--computers N] [--rules N]
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startRedis, type TestRedis } from '../test/helpers/redis.js';

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
}

const DURATION = arg('duration', 10);
const CONNECTIONS = arg('connections', 64);
const COMPUTERS = arg('computers', 100);
const RULES = arg('rules', 10);
const ADMIN_KEY = 'bench-admin-key';
const SERVER = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'api', 'src', 'server.js');

interface Result {
  name: string;
  requests_per_second: number;
  latency_p50_ms: number;
  latency_p99_ms: number;
  requests: number;
  non_2xx: number;
  errors: number;
}

type Autocannon = (options: Record<string, unknown>) => Promise<{
  requests: { average: number; total: number };
  latency: { p50: number; p99: number };
  non2xx: number;
  errors: number;
}>;

async function freePort(): Promise<number> {
  const { createServer } = await import('node:net');
  const s = createServer().listen(0, '127.0.0.1');
  await once(s, 'listening');
  const port = (s.address() as { port: number }).port;
  s.close();
  return port;
}

function policyBody(i: number): string {
  const rules = Array.from({ length: RULES }, (_, j) => ({
    host: j % 2 ? `svc${j}.example.com` : `198.51.100.${j}/32`,
    port: 1 + ((i + j) % 65535),
    protocol: 'tcp',
  }));
  return JSON.stringify({ mode: 'allowlist', rules });
}

async function main(): Promise<void> {
  let redis: TestRedis | undefined;
  let server: ChildProcess | undefined;
  try {
    redis = await startRedis({ tcp: true });
    const port = await freePort();
    const base = `http://127.0.0.1:${port}`;
    server = spawn(process.execPath, [SERVER], {
      env: {
        PATH: process.env['PATH'] ?? '',
        REDIS_URL: redis.url,
        EGRESSD_ADMIN_KEY: ADMIN_KEY,
        EGRESSD_API_LISTEN: `127.0.0.1:${port}`,
        EGRESSD_DEFAULT_NODE: 'bench-node',
        EGRESSD_LOG_LEVEL: 'warn',
      },
      stdio: ['ignore', 'inherit', 'inherit'],
    });
    const auth = { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' };
    // Bounded: up to 10 s for the server to answer.
    let up = false;
    for (let i = 0; i < 100 && !up; i++) {
      up = await fetch(`${base}/readyz`).then(
        (r) => r.ok,
        () => false,
      );
      if (!up) await new Promise((r) => setTimeout(r, 100));
    }
    if (!up) throw new Error('the API server did not come up within 10 s');
    for (let i = 0; i < COMPUTERS; i++) {
      const id = `bench-${i}`;
      await fetch(`${base}/api/v1/computers/${id}`, {
        method: 'PUT',
        headers: auth,
        body: JSON.stringify({ cgroup: `bench/${id}` }),
      });
      await fetch(`${base}/api/v1/computers/${id}/network-policy?wait=0`, {
        method: 'PUT',
        headers: auth,
        body: policyBody(i),
      });
    }

    const name = 'autocannon';
    const autocannon = ((await import(name)) as { default: Autocannon }).default;
    const run = async (title: string, options: Record<string, unknown>): Promise<Result> => {
      const r = await autocannon({
        url: base,
        connections: CONNECTIONS,
        duration: DURATION,
        headers: auth,
        ...options,
      });
      return {
        name: title,
        requests_per_second: Math.round(r.requests.average),
        latency_p50_ms: r.latency.p50,
        latency_p99_ms: r.latency.p99,
        requests: r.requests.total,
        non_2xx: r.non2xx,
        errors: r.errors,
      };
    };
    let n = 0;
    const results: Result[] = [];
    // Warm-up (JIT, connections), not reported.
    await run('warm-up', { duration: 2, path: '/api/v1/computers/bench-0/network-policy' });
    results.push(
      await run('GET /computers/{id}/network-policy', {
        requests: [
          {
            method: 'GET',
            setupRequest: (req: Record<string, unknown>) => ({
              ...req,
              path: `/api/v1/computers/bench-${n++ % COMPUTERS}/network-policy`,
            }),
          },
        ],
      }),
    );
    results.push(
      await run('PUT /computers/{id}/network-policy?wait=0', {
        requests: [
          {
            method: 'PUT',
            setupRequest: (req: Record<string, unknown>) => {
              const i = n++;
              return {
                ...req,
                path: `/api/v1/computers/bench-${i % COMPUTERS}/network-policy?wait=0`,
                body: policyBody(i),
              };
            },
          },
        ],
      }),
    );

    const machine = `${os.cpus().length} × ${os.cpus()[0]?.model ?? 'cpu'}, node ${process.version}`;
    console.log(
      `\nAPI benchmark: ${machine}; ${CONNECTIONS} connections, ${DURATION} s each, ${RULES} rules per policy\n`,
    );
    console.log('| request | req/s | p50 ms | p99 ms | requests | non-2xx | errors |');
    console.log('|---|---:|---:|---:|---:|---:|---:|');
    for (const r of results) {
      console.log(
        `| ${r.name} | ${r.requests_per_second} | ${r.latency_p50_ms} | ${r.latency_p99_ms} | ${r.requests} | ${r.non_2xx} | ${r.errors} |`,
      );
    }
    console.log(
      `\n${JSON.stringify({ machine, connections: CONNECTIONS, duration_s: DURATION, rules: RULES, results }, null, 2)}`,
    );
  } finally {
    if (server?.pid !== undefined && server.exitCode === null) {
      const exited = once(server, 'exit');
      process.kill(server.pid, 'SIGTERM');
      await exited;
    }
    await redis?.cleanup();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
