/**
 * The real `egressd` in a process of its own, for the privileged tests and
 * the benchmarks.
 *
 * startEgressd() runs `egressd all` with the test world's pin directory and
 * sandbox root, a state directory (temporary unless given), a free port on
 * 127.0.0.1 (or the host and port given), an admin key, a redis-server of
 * test/helpers/redis.ts or egressd's embedded one, and a DNS upstream that is
 * nothing unless given (127.0.0.1:9: nothing may leave this host). It is
 * ready once it says it is running and /readyz answers 200.
 *
 * launch() is the process part alone (for an egressd started as a user
 * would, e.g. in the world's namespace): stop() ends egressd by its own pid
 * (SIGTERM or the signal given, SIGKILL after 15 s), then kills by pid
 * whatever it started (the agent process, redis-server) that is still there
 * 5 s later; an exit hook does the same if the test process ends first.
 */
import { type ChildProcess, type SpawnOptions, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Client } from '../../api/client.js';
import { parsePrometheus } from './prometheus.js';
import { REPO_ROOT, SCALE, type World } from './world.js';

export const CLI = path.join(REPO_ROOT, 'dist/cli/main.js');
export const ADMIN_KEY = 'egressd-test-admin-key-0123456789';
export { SCALE };

export async function freePort(host = '127.0.0.1'): Promise<number> {
  const s = createServer().listen(0, host);
  await once(s, 'listening');
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

/** Polls `check` every 25 ms until it holds; throws after `ms` (scaled). */
export async function waitFor(
  what: string,
  check: () => boolean | Promise<boolean>,
  ms = 10_000,
): Promise<void> {
  const deadline = Date.now() + ms * SCALE;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms * SCALE} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export interface LaunchOptions {
  /** Node's arguments: its options, the CLI, the command. */
  args: string[];
  env: NodeJS.ProcessEnv;
  /** How to start it: child_process.spawn unless given (world.spawn: in the world's namespace). */
  spawn?: (
    command: string,
    args: string[],
    options: { env: NodeJS.ProcessEnv; stdio: SpawnOptions['stdio'] },
  ) => ChildProcess;
  /** Once egressd says it is running, this must say so too (/readyz). */
  ready?: () => Promise<boolean>;
  /** Removed by stop(). */
  ownDir?: string;
  /** A start that must fail: resolves once egressd has exited instead of throwing. */
  expectFailure?: boolean;
}

export interface EgressdProcess {
  child: ChildProcess;
  pid: number;
  /** The last 64 KiB of its stderr (messages) and stdout (the JSON log). */
  stderr(): string;
  stdout(): string;
  /** The pids of its agent process and redis-server, as they are now. */
  helpers(): { agent: number | undefined; redis: number | undefined };
  /** Ends egressd and what it started; resolves to the pids that had to be killed after it. Idempotent. */
  stop(signal?: NodeJS.Signals): Promise<number[]>;
}

function alive(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

/** The direct children of a process (from /proc), [] once it is gone. */
export function childrenOf(pid: number): number[] {
  try {
    return readdirSync(`/proc/${pid}/task`).flatMap((task) =>
      readFileSync(`/proc/${pid}/task/${task}/children`, 'utf8').split(' ').filter(Boolean).map(Number),
    );
  } catch {
    return [];
  }
}

export function commandOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
  } catch {
    return '';
  }
}

/** Alive and not a zombie. */
export function running(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/** Starts egressd; resolves once it says it is running and `ready` holds (within 30 s, scaled). */
export async function launch(opts: LaunchOptions): Promise<EgressdProcess> {
  const start = opts.spawn ?? spawn;
  const child = start(process.execPath, opts.args, { env: opts.env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  let stdout = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-65536);
  });
  child.stdout?.on('data', (d: Buffer) => {
    stdout = (stdout + d.toString()).slice(-65536);
  });
  const pid = child.pid ?? -1;
  // Every helper ever seen: one that outlives egressd is no longer its child.
  const seen = new Set<number>();
  const helpers = () => {
    const found: { agent: number | undefined; redis: number | undefined } = {
      agent: undefined,
      redis: undefined,
    };
    for (const p of childrenOf(pid)) {
      seen.add(p);
      const cmd = commandOf(p);
      if (cmd.includes('redis-server')) found.redis = p;
      else if (cmd.includes(' agent')) found.agent = p;
    }
    return found;
  };
  const killLeft = () => {
    const left = [...seen].filter(running);
    for (const p of left) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {}
    }
    return left;
  };
  const onExit = () => {
    if (alive(child)) process.kill(pid, 'SIGKILL');
    killLeft();
    if (opts.ownDir) rmSync(opts.ownDir, { recursive: true, force: true });
  };
  process.on('exit', onExit);
  const stop = async (signal: NodeJS.Signals = 'SIGTERM') => {
    helpers();
    if (alive(child)) {
      const exited = once(child, 'exit');
      process.kill(pid, signal);
      const timer = setTimeout(() => alive(child) && process.kill(pid, 'SIGKILL'), 15_000);
      await exited;
      clearTimeout(timer);
    }
    // What egressd started ends with it (or, after SIGKILL, soon after); what is left is killed here.
    await waitFor('egressd helpers ended', () => ![...seen].some(running), 5000).catch(() => {});
    const left = killLeft();
    if (opts.ownDir) rmSync(opts.ownDir, { recursive: true, force: true });
    process.off('exit', onExit);
    return left;
  };
  try {
    await waitFor(
      'egressd ready',
      async () => {
        if (!alive(child)) {
          if (opts.expectFailure) return true;
          throw new Error(`egressd exited (${child.exitCode ?? child.signalCode}): ${stderr}`);
        }
        helpers();
        return stderr.includes('running') && (await (opts.ready?.() ?? true));
      },
      30_000,
    );
  } catch (err) {
    await stop('SIGKILL');
    throw err;
  }
  return { child, pid, stderr: () => stderr, stdout: () => stdout, helpers, stop };
}

export interface EgressdOptions {
  world: World;
  node: string;
  /** A redis-server of test/helpers/redis.ts; without it, egressd's embedded one. */
  redisUrl?: string;
  /** Where the API listens: 127.0.0.1 and a free port unless given. */
  host?: string;
  port?: number;
  /** Kept (and left to the caller) when given; else a temporary one that stop() removes. */
  stateDir?: string;
  /** 127.0.0.1:9 unless given: nothing, so no DNS leaves this host. */
  dnsUpstream?: string;
  /** More environment (EGRESSD_MAX_RULES, EGRESSD_BODY_LIMIT, ...). */
  env?: Record<string, string>;
  /** Node options before the CLI (e.g. --cpu-prof); its agent process gets them too. */
  nodeArgs?: string[];
  /** More arguments after `egressd all` (e.g. --api-workers 2). */
  args?: string[];
  expectFailure?: boolean;
}

export interface Egressd extends EgressdProcess {
  /** http://HOST:PORT */
  origin: string;
  stateDir: string;
  adminKey: string;
  /** The environment it was started with. */
  env: Record<string, string>;
  /** api/client.ts with the admin key. */
  client: Client;
  /** The environment of egressd's client commands (`egressd computers ...`) for this instance. */
  clientEnv(extra?: NodeJS.ProcessEnv): NodeJS.ProcessEnv;
  /** GET /metrics as name{labels} → value. */
  metrics(): Promise<Map<string, number>>;
}

/** Starts `egressd all`; resolves once it is running and /readyz answers 200. */
export async function startEgressd(opts: EgressdOptions): Promise<Egressd> {
  const host = opts.host ?? '127.0.0.1';
  const port = opts.port ?? (await freePort(host));
  const stateDir = opts.stateDir ?? mkdtempSync(path.join(tmpdir(), 'egressd-state-'));
  const env: Record<string, string> = {
    PATH: process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin',
    ...(opts.redisUrl === undefined ? {} : { REDIS_URL: opts.redisUrl }),
    EGRESSD_ADMIN_KEY: ADMIN_KEY,
    EGRESSD_STATE_DIR: stateDir,
    EGRESSD_BPFFS_DIR: opts.world.pinDir,
    EGRESSD_LISTEN: `${host}:${port}`,
    EGRESSD_NODE: opts.node,
    EGRESSD_CGROUP_ROOTS: opts.world.cgroupRelative(),
    EGRESSD_LOG_LEVEL: 'warn',
    EGRESSD_DNS_UPSTREAM: opts.dnsUpstream ?? '127.0.0.1:9',
    ...opts.env,
  };
  const origin = `http://${host}:${port}`;
  const client = new Client({ baseUrl: origin, apiKey: ADMIN_KEY });
  const proc = await launch({
    args: [...(opts.nodeArgs ?? []), CLI, 'all', ...(opts.args ?? [])],
    env,
    ready: () =>
      client.send('GET', '/readyz').then(
        (r) => r.status === 200,
        () => false,
      ),
    ownDir: opts.stateDir === undefined ? stateDir : undefined,
    expectFailure: opts.expectFailure,
  });
  return {
    ...proc,
    origin,
    stateDir,
    adminKey: ADMIN_KEY,
    env,
    client,
    clientEnv: (extra = {}) => ({
      ...process.env,
      ...env,
      EGRESSD_API: origin,
      EGRESSD_API_KEY: ADMIN_KEY,
      ...extra,
    }),
    metrics: async () => {
      const r = await client.send('GET', '/metrics');
      if (r.status !== 200) throw new Error(`GET ${origin}/metrics: ${r.status} ${r.text}`);
      return parsePrometheus(r.text);
    },
  };
}
