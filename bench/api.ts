/**
 * API throughput on this machine: a real redis-server (127.0.0.1, append-only
 * file fsynced every second, Redis's usual production setting), the API
 * server as a child process (node dist/cli/main.js api, with 1 and then 2
 * worker processes), and a load generator: wrk when installed (C, so it
 * takes less of the machine's two cores), otherwise autocannon. Measures GET
 * of a policy and PUT ?wait=0, spread over a set of computers; every PUT is
 * a real change (the rules' ports vary), so each writes a new version and a
 * change record. A first row measures a bare node:http server (no Koa, no
 * Redis) as the machine's baseline. Prints a table and JSON.
 *
 *   node dist/bench/api.js [--duration S] [--connections N] [--computers N] [--rules N]
 *                          [--workers 1,2] [--tool wrk|autocannon]
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Client } from '../api/client.js';
import { freePort } from '../test/helpers/egressd.js';
import { startRedis, type TestRedis } from '../test/helpers/redis.js';
import { benchOptions, machine, writeResults } from './common.js';

const execFileAsync = promisify(execFile);

const WRK = '/usr/bin/wrk';
const OPTIONS = benchOptions(
  'node dist/bench/api.js',
  'API throughput: GET and PUT ?wait=0 of policies under wrk or autocannon, against a bare node:http server.',
  {
    duration: { type: 'number', default: 10, help: 'seconds of each measured load' },
    connections: { type: 'number', default: 64, help: "the load generator's connections" },
    computers: { type: 'number', default: 100, help: 'computers the requests are spread over' },
    rules: { type: 'number', default: 10, help: 'rules per policy' },
    workers: { type: 'numbers', default: [1, 2], help: 'API worker processes, one run each' },
    tool: {
      type: 'string',
      default: existsSync(WRK) ? 'wrk' : 'autocannon',
      choices: ['wrk', 'autocannon'],
      help: 'the load generator',
    },
  },
);
const DURATION = OPTIONS.duration;
const CONNECTIONS = OPTIONS.connections;
const COMPUTERS = OPTIONS.computers;
const RULES = OPTIONS.rules;
const WORKERS = OPTIONS.workers;
const TOOL = OPTIONS.tool;
const ADMIN_KEY = 'bench-admin-key';
const SERVER = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'cli', 'main.js');

interface Result {
  name: string;
  workers: number;
  requests_per_second: number;
  latency_p50_ms: number;
  latency_p99_ms: number;
  requests: number;
  non_2xx: number;
  errors: number;
}

interface Load {
  requests: number;
  seconds: number;
  p50Ms: number;
  p99Ms: number;
  non2xx: number;
  errors: number;
}

function row(name: string, workers: number, l: Load): Result {
  return {
    name,
    workers,
    requests_per_second: Math.round(l.requests / l.seconds),
    latency_p50_ms: Math.round(l.p50Ms * 100) / 100,
    latency_p99_ms: Math.round(l.p99Ms * 100) / 100,
    requests: l.requests,
    non_2xx: l.non2xx,
    errors: l.errors,
  };
}

type Autocannon = (options: Record<string, unknown>) => Promise<{
  requests: { average: number; total: number };
  duration: number;
  latency: { p50: number; p99: number };
  non2xx: number;
  errors: number;
}>;

function policyBody(i: number): string {
  const rules = Array.from({ length: RULES }, (_, j) => ({
    host: j % 2 ? `svc${j}.example.com` : `198.51.100.${j}/32`,
    port: 1 + ((i + j) % 65535),
    protocol: 'tcp',
  }));
  return JSON.stringify({ mode: 'allowlist', rules });
}

/** wrk scripts: same requests as policyBody, built in Lua; `done` prints one JSON line. */
function wrkScript(kind: 'get' | 'put'): string {
  const done = `
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"non2xx":%d,"errors":%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), e.status,
    e.connect + e.read + e.write + e.timeout))
end`;
  const head = `local n = 0
wrk.headers["Authorization"] = "Bearer ${ADMIN_KEY}"
wrk.headers["Content-Type"] = "application/json"
`;
  if (kind === 'get') {
    return `${head}request = function()
  n = n + 1
  return wrk.format("GET", "/api/v1/computers/bench-" .. (n % ${COMPUTERS}) .. "/network-policy")
end
${done}`;
  }
  return `${head}request = function()
  n = n + 1
  local rules = {}
  for j = 0, ${RULES - 1} do
    local host
    if j % 2 == 1 then host = '"svc' .. j .. '.example.com"' else host = '"198.51.100.' .. j .. '/32"' end
    rules[#rules + 1] = '{"host":' .. host .. ',"port":' .. (1 + (n + j) % 65535) .. ',"protocol":"tcp"}'
  end
  local body = '{"mode":"allowlist","rules":[' .. table.concat(rules, ",") .. ']}'
  return wrk.format("PUT", "/api/v1/computers/bench-" .. (n % ${COMPUTERS}) .. "/network-policy?wait=0", nil, body)
end
${done}`;
}

async function runWrk(base: string, script: string, seconds: number): Promise<Load> {
  const { stdout } = await execFileAsync(
    WRK,
    ['-t1', `-c${CONNECTIONS}`, `-d${seconds}s`, '-s', script, base],
    {
      timeout: (seconds + 30) * 1000,
    },
  );
  const line = stdout.split('\n').find((l) => l.startsWith('WRKJSON '));
  if (!line) throw new Error(`wrk printed no summary:\n${stdout}`);
  const j = JSON.parse(line.slice('WRKJSON '.length)) as Record<string, number>;
  return {
    requests: j['requests'] ?? 0,
    seconds: (j['duration_us'] ?? 1) / 1e6,
    p50Ms: (j['p50_us'] ?? 0) / 1000,
    p99Ms: (j['p99_us'] ?? 0) / 1000,
    non2xx: j['non2xx'] ?? 0,
    errors: j['errors'] ?? 0,
  };
}

async function runAutocannon(base: string, kind: 'get' | 'put', seconds: number): Promise<Load> {
  const name = 'autocannon';
  const autocannon = ((await import(name)) as { default: Autocannon }).default;
  let n = 0;
  const request =
    kind === 'get'
      ? {
          method: 'GET',
          setupRequest: (req: Record<string, unknown>) => ({
            ...req,
            path: `/api/v1/computers/bench-${n++ % COMPUTERS}/network-policy`,
          }),
        }
      : {
          method: 'PUT',
          setupRequest: (req: Record<string, unknown>) => {
            const i = n++;
            return {
              ...req,
              path: `/api/v1/computers/bench-${i % COMPUTERS}/network-policy?wait=0`,
              body: policyBody(i),
            };
          },
        };
  const r = await autocannon({
    url: base,
    connections: CONNECTIONS,
    duration: seconds,
    headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' },
    requests: [request],
  });
  return {
    requests: r.requests.total,
    seconds: r.duration,
    p50Ms: r.latency.p50,
    p99Ms: r.latency.p99,
    non2xx: r.non2xx,
    errors: r.errors,
  };
}

async function startServer(redisUrl: string, port: number, workers: number): Promise<ChildProcess> {
  const server = spawn(process.execPath, [SERVER, 'api'], {
    env: {
      PATH: process.env['PATH'] ?? '',
      REDIS_URL: redisUrl,
      EGRESSD_ADMIN_KEY: ADMIN_KEY,
      EGRESSD_LISTEN: `127.0.0.1:${port}`,
      EGRESSD_DEFAULT_NODE: 'bench-node',
      EGRESSD_CGROUP_ROOTS: 'egressd',
      EGRESSD_API_WORKERS: String(workers),
      EGRESSD_LOG_LEVEL: 'warn',
    },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  // Bounded: up to 10 s for every worker to answer (readiness is per process; ask a few times).
  const client = new Client({ baseUrl: `http://127.0.0.1:${port}`, apiKey: ADMIN_KEY });
  let ready = 0;
  for (let i = 0; i < 100 && ready < 2 * workers; i++) {
    const ok = await client.send('GET', '/readyz').then(
      (r) => r.status === 200,
      () => false,
    );
    if (ok) ready++;
    else await new Promise((r) => setTimeout(r, 100));
  }
  if (ready === 0) throw new Error('the API server did not come up within 10 s');
  return server;
}

async function stopServer(server: ChildProcess): Promise<void> {
  if (server.pid === undefined || server.exitCode !== null || server.signalCode !== null) return;
  const exited = once(server, 'exit');
  process.kill(server.pid, 'SIGTERM');
  await exited;
}

async function main(): Promise<void> {
  let redis: TestRedis | undefined;
  let server: ChildProcess | undefined;
  const dir = await mkdtemp(path.join(os.tmpdir(), 'egressd-bench-'));
  try {
    redis = await startRedis({ tcp: true, appendfsync: 'everysec' });
    const results: Result[] = [];
    const scripts = { get: path.join(dir, 'get.lua'), put: path.join(dir, 'put.lua') };
    await writeFile(scripts.get, wrkScript('get'));
    await writeFile(scripts.put, wrkScript('put'));
    const load = (base: string, kind: 'get' | 'put', seconds: number) =>
      TOOL === 'wrk' ? runWrk(base, scripts[kind], seconds) : runAutocannon(base, kind, seconds);

    // Baseline: what this machine does with a bare node:http server answering a fixed JSON
    // body (no Koa, no Redis), under the same load generator.
    {
      const port = await freePort();
      const bare = spawn(
        process.execPath,
        [
          '-e',
          `const body = JSON.stringify({ data: { computer_id: 'x', mode: 'unrestricted', rules: [] } });
           require('node:http').createServer((req, res) => { res.setHeader('content-type', 'application/json'); res.end(body); })
             .listen(${port}, '127.0.0.1');
           process.on('SIGTERM', () => process.exit(0));`,
        ],
        { stdio: ['ignore', 'inherit', 'inherit'] },
      );
      server = bare;
      for (let i = 0; i < 100; i++) {
        const up = await fetch(`http://127.0.0.1:${port}/`).then(
          (r) => r.ok,
          () => false,
        );
        if (up) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      const base = `http://127.0.0.1:${port}`;
      await load(base, 'get', 2);
      const l = await load(base, 'get', DURATION);
      results.push(row('baseline: bare node:http, fixed JSON (no Koa, no Redis)', 1, l));
      await stopServer(bare);
      server = undefined;
    }

    for (const workers of WORKERS) {
      const port = await freePort();
      const base = `http://127.0.0.1:${port}`;
      server = await startServer(redis.url, port, workers);
      const client = new Client({ baseUrl: base, apiKey: ADMIN_KEY });
      for (let i = 0; i < COMPUTERS; i++) {
        const id = `bench-${i}`;
        // Below the default sandbox root ("egressd"): the API refuses cgroups outside its roots.
        await client.computers.put(id, { cgroup: `egressd/${id}` });
        await client.request('PUT', `/api/v1/computers/${id}/network-policy`, {
          rawBody: policyBody(i),
          headers: { 'content-type': 'application/json' },
          query: { wait: 0 },
        });
      }
      await load(base, 'get', 2); // warm-up (JIT, connections), not reported
      for (const [kind, name] of [
        ['get', 'GET /computers/{id}/network-policy'],
        ['put', 'PUT /computers/{id}/network-policy?wait=0'],
      ] as const) {
        const l = await load(base, kind, DURATION);
        results.push(row(name, workers, l));
      }
      await stopServer(server);
      server = undefined;
    }

    const host = `${machine()}, node ${process.version}`;
    console.log(
      `\nAPI benchmark (${TOOL}): ${host}; ${CONNECTIONS} connections, ${DURATION} s each, ${RULES} rules per policy, ${COMPUTERS} computers\n`,
    );
    // The machine's speed swings with its host: the ratio to the bare server of the same run holds better.
    const baseline = results[0]?.requests_per_second ?? Number.NaN;
    console.log(
      '| request | API workers | req/s | vs bare node:http | p50 ms | p99 ms | requests | non-2xx | errors |',
    );
    console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|');
    for (const r of results) {
      console.log(
        `| ${r.name} | ${r.workers} | ${r.requests_per_second} | ${(r.requests_per_second / baseline).toFixed(2)} | ${r.latency_p50_ms} | ${r.latency_p99_ms} | ${r.requests} | ${r.non_2xx} | ${r.errors} |`,
      );
    }
    writeResults('api', {
      tool: TOOL,
      machine: host,
      connections: CONNECTIONS,
      duration_s: DURATION,
      rules: RULES,
      results: results.map((r) => ({
        ...r,
        ratio_to_baseline: +(r.requests_per_second / baseline).toFixed(3),
      })),
    });
  } finally {
    if (server) await stopServer(server);
    await redis?.cleanup();
    await rm(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
