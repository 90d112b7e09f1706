/**
 * The multi-host test world (issue 19): everything a deployment of egressd
 * on many hosts has, as real processes on this machine.
 *
 * - Three "hosts" (host-a, host-b, host-c), each a test World of its own
 *   (world.ts: a network namespace with the servers on documentation
 *   addresses, a cgroup subtree, a bpffs directory), each running a real
 *   `egressd agent` (launch() of egressd.ts) with its own --node, pin
 *   directory, sandbox root (its world's cgroup), state directory, metrics
 *   port and DNS proxy port range.
 * - Redis: a primary and one replica (redis.ts, TCP on 127.0.0.1) and three
 *   Sentinels (sentinel.ts: down after 1 s, failover timeout 5 s, so a
 *   failover takes about 3 s).
 * - Two `egressd api` replicas on 127.0.0.1, with --redis-min-replicas 1
 *   (unless told otherwise) and every host's sandbox root.
 *   Agents and APIs all reach Redis through the Sentinels (redis+sentinel://).
 *
 *   let mh: MultiHost;
 *   test.before(async () => { mh = await createMultiHost(); });
 *   test.after.always(() => mh?.destroy());
 *
 * Each agent's JSON log (level info) is kept whole in `host.log` (its
 * status changes, resyncs, refusals of older versions). destroy() ends the
 * processes it started (each by its own pid: launch(), startRedis(),
 * startSentinels() do that), then the worlds, and removes the state
 * directories; it goes through every step even when one fails, and is
 * what a failed createMultiHost() runs on what it had started.
 */
import { type ChildProcess, type SpawnOptions, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { Client } from '../../api/client.js';
import { ADMIN_KEY, CLI, type EgressdProcess, freePort, launch, SCALE, waitFor } from './egressd.js';
import { parsePrometheus } from './prometheus.js';
import { startRedis, type TestRedis } from './redis.js';
import { startSentinels, type TestSentinels } from './sentinel.js';
import { createWorld, type World } from './world.js';

export const HOST_NAMES = ['host-a', 'host-b', 'host-c'] as const;

export interface MultiHostOptions {
  /** --redis-min-replicas of the API replicas. @default 1 */
  minReplicas?: number;
  /** --redis-replica-timeout (ms) of the API replicas. @default 500 */
  replicaTimeoutMs?: number;
  /** How many API replicas. @default 2 */
  apis?: number;
}

/** One line of an agent's JSON log (pino). */
export interface AgentLogLine {
  time: number;
  level: number;
  msg: string;
  computer?: string;
  from?: string;
  to?: string;
  kept?: number;
  asked?: number;
}

export interface Host {
  /** Its --node. */
  node: string;
  world: World;
  agent: EgressdProcess;
  stateDir: string;
  /** http://127.0.0.1:PORT/metrics of its agent. */
  metricsUrl: string;
  /** Every line its agent logged, in order. */
  log: AgentLogLine[];
  /** Its agent's /metrics as name{labels} → value. */
  metrics(): Promise<Map<string, number>>;
  /** `<world cgroup root>/<name>` made, and its path relative to the cgroup2 mount (what the API takes). */
  makeCgroup(name: string): { path: string; relative: string };
}

export interface ApiReplica {
  origin: string;
  client: Client;
  proc: EgressdProcess;
}

export interface MultiHost {
  hosts: Host[];
  apis: ApiReplica[];
  primary: TestRedis;
  replica: TestRedis;
  sentinels: TestSentinels;
  /** The API replica for the i-th request: they take turns. */
  api(i: number): Client;
  /** The host of a node name. */
  host(node: string): Host;
  destroy(): Promise<void>;
}

/** Stops for each part; run by destroy() in reverse order of start, all of them whatever fails. */
type Stop = [what: string, stop: () => unknown];

async function runStops(stops: Stop[]): Promise<void> {
  const errors: string[] = [];
  for (const [what, stop] of [...stops].reverse()) {
    try {
      await stop();
    } catch (err) {
      errors.push(`${what}: ${err instanceof Error ? err.message : String(err)}`);
    }
  }
  if (errors.length > 0) throw new Error(`multi-host teardown: ${errors.join('; ')}`);
}

/** A state directory removed by destroy(). */
function stateDir(stops: Stop[], label: string): string {
  const dir = mkdtempSync(path.join(tmpdir(), `egressd-${label}-`));
  stops.push([`removing ${dir}`, () => rmSync(dir, { recursive: true, force: true })]);
  return dir;
}

/** child_process.spawn that also hands every stdout line to `onLine` from the first byte on. */
function spawnWithLines(onLine: (line: string) => void) {
  return (
    command: string,
    args: string[],
    options: { env: NodeJS.ProcessEnv; stdio: SpawnOptions['stdio'] },
  ): ChildProcess => {
    const child = spawn(command, args, options);
    if (child.stdout) createInterface({ input: child.stdout }).on('line', onLine);
    return child;
  };
}

const BASE_ENV = () => ({
  PATH: process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin',
  EGRESSD_LOG_FORMAT: 'json',
  // Nothing may leave this machine: the DNS proxy forwards to nothing.
  EGRESSD_DNS_UPSTREAM: '127.0.0.1:9',
});

async function startHost(
  stops: Stop[],
  node: string,
  redisUrl: string,
  dnsPorts: string,
  world: World,
): Promise<Host> {
  const dir = stateDir(stops, node);
  const metricsPort = await freePort();
  const metricsUrl = `http://127.0.0.1:${metricsPort}/metrics`;
  const log: AgentLogLine[] = [];
  const agent = await launch({
    args: [CLI, 'agent'],
    env: {
      ...BASE_ENV(),
      REDIS_URL: redisUrl,
      EGRESSD_NODE: node,
      EGRESSD_BPFFS_DIR: world.pinDir,
      EGRESSD_CGROUP_ROOTS: world.cgroupRelative(),
      EGRESSD_STATE_DIR: dir,
      EGRESSD_METRICS_LISTEN: `127.0.0.1:${metricsPort}`,
      EGRESSD_DNS_PORTS: dnsPorts,
      EGRESSD_LOG_LEVEL: 'info',
    },
    spawn: spawnWithLines((line) => {
      try {
        log.push(JSON.parse(line) as AgentLogLine);
      } catch {
        // not a log line
      }
    }),
    ready: () =>
      fetch(metricsUrl).then(
        (r) => r.ok,
        () => false,
      ),
  });
  stops.push([`stopping the agent of ${node}`, () => agent.stop()]);
  return {
    node,
    world,
    agent,
    stateDir: dir,
    metricsUrl,
    log,
    metrics: async () => {
      const r = await fetch(metricsUrl);
      if (!r.ok) throw new Error(`GET ${metricsUrl}: ${r.status}`);
      return parsePrometheus(await r.text());
    },
    makeCgroup: (name) => world.makeCgroup(name),
  };
}

async function startApi(
  stops: Stop[],
  redisUrl: string,
  roots: string[],
  opts: Required<MultiHostOptions>,
  n: number,
): Promise<ApiReplica> {
  const port = await freePort();
  const origin = `http://127.0.0.1:${port}`;
  const client = new Client({ baseUrl: origin, apiKey: ADMIN_KEY });
  const proc = await launch({
    args: [CLI, 'api'],
    env: {
      ...BASE_ENV(),
      REDIS_URL: redisUrl,
      EGRESSD_LISTEN: `127.0.0.1:${port}`,
      EGRESSD_ADMIN_KEY: ADMIN_KEY,
      EGRESSD_STATE_DIR: stateDir(stops, `api-${n}`),
      EGRESSD_CGROUP_ROOTS: roots.join(','),
      EGRESSD_REDIS_MIN_REPLICAS: String(opts.minReplicas),
      EGRESSD_REDIS_REPLICA_TIMEOUT: String(opts.replicaTimeoutMs),
      EGRESSD_LOG_LEVEL: 'warn',
    },
    ready: () =>
      client.send('GET', '/readyz').then(
        (r) => r.status === 200,
        () => false,
      ),
  });
  stops.push([`stopping API replica ${n}`, () => proc.stop()]);
  return { origin, client, proc };
}

/** Starts the whole multi-host world; on any failure removes what it had started and throws. */
export async function createMultiHost(options: MultiHostOptions = {}): Promise<MultiHost> {
  const opts: Required<MultiHostOptions> = {
    minReplicas: options.minReplicas ?? 1,
    replicaTimeoutMs: options.replicaTimeoutMs ?? 500,
    apis: options.apis ?? 2,
  };
  const stops: Stop[] = [];
  // Each world, server and process has an exit hook (its safety net).
  process.setMaxListeners(Math.max(process.getMaxListeners(), 40));
  try {
    const worlds: World[] = [];
    for (const node of HOST_NAMES) {
      const world = await createWorld();
      stops.push([`destroying the world of ${node}`, () => world.destroy()]);
      worlds.push(world);
    }
    const primary = await startRedis({ tcp: true });
    stops.push(['ending the Redis primary', () => primary.cleanup()]);
    const replica = await startRedis({ replicaOf: primary });
    stops.push(['ending the Redis replica', () => replica.cleanup()]);
    const sentinels = await startSentinels(primary);
    stops.push(['ending the Sentinels', () => sentinels.cleanup()]);

    const roots = worlds.map((w) => w.cgroupRelative());
    const apis: ApiReplica[] = [];
    for (let n = 0; n < opts.apis; n++) apis.push(await startApi(stops, sentinels.url, roots, opts, n));
    // Per-computer DNS proxy ports, below the ephemeral range and apart for each host (the agents
    // share this machine's namespace), placed by the first world's id so that concurrent runs differ.
    const base = 20_000 + (Number.parseInt(worlds[0]?.id.slice(0, 4) ?? '0', 16) % 19) * 600;
    const hosts: Host[] = [];
    for (const [i, node] of HOST_NAMES.entries()) {
      const ports = `${base + i * 200}-${base + i * 200 + 199}`;
      hosts.push(await startHost(stops, node, sentinels.url, ports, worlds[i] as World));
    }
    // Bounded: every agent has said it runs (GET /api/v1/nodes lists it).
    await waitFor(
      'every agent in GET /api/v1/nodes',
      async () => {
        const r = await apis[0]?.client.send('GET', '/api/v1/nodes');
        const nodes = ((r?.body as { data?: { node: string }[] })?.data ?? []).map((n) => n.node);
        return HOST_NAMES.every((h) => nodes.includes(h));
      },
      30_000,
    );
    let destroying: Promise<void> | undefined;
    return {
      hosts,
      apis,
      primary,
      replica,
      sentinels,
      api: (i) => (apis[i % apis.length] as ApiReplica).client,
      host: (node) => {
        const h = hosts.find((x) => x.node === node);
        if (!h) throw new Error(`no host ${node}`);
        return h;
      },
      destroy: () => {
        destroying ??= runStops(stops);
        return destroying;
      },
    };
  } catch (err) {
    await runStops(stops).catch((e: Error) => {
      (err as Error).message += ` (and ${e.message})`;
    });
    throw err;
  }
}

export { SCALE };
