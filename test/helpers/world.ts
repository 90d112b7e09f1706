/**
 * The test world for privileged tests: a network namespace with servers on
 * documentation addresses, a cgroup subtree and a bpffs directory, all
 * removed again by `destroy()`, even when a test fails.
 *
 * Usage with ava (one world per test file; ava runs files in separate
 * processes):
 *
 *   let world: World;
 *   test.before(async () => { world = await createWorld(); });
 *   test.after.always(() => world?.destroy());
 *
 *   test('computer reaches the world', async (t) => {
 *     const c = world.makeCgroup('computer-1');
 *     t.deepEqual(await world.probeResults({ cgroup: c.path }, 'tcp:192.0.2.1:80'), ['ok']);
 *   });
 *
 * Or `const world = await withWorld(test)`, which registers the teardown.
 *
 * The world network namespace (`egt-<hex>`) has only `lo`, with the addresses
 * of WORLD_ADDRESSES. Nothing routes out of it, so any address outside those
 * answers ENETUNREACH. Every address in 203.0.113.0/24 and 2001:db8:ff::/64
 * is local there too (AnyIP routes), for tests and benchmarks whose
 * destination varies. One probe server listens on WORLD_PORTS (TCP and UDP,
 * IPv4 and IPv6, any address); CLOSED_PORT has no listener (ECONNREFUSED).
 *
 * Host namespace: one probe server on 127.0.0.1 and ::1 (port
 * `world.hostLoopbackPort`). Probes that run in the host namespace may only
 * target loopback (checked before they start): nothing in the host's own
 * namespace sends to a non-loopback address.
 *
 * The servers run with --report: every connection and datagram they see is
 * in `serverEvents()`. They never block on that output: when the test's event
 * loop is busy (execFileSync, a tight loop), events are dropped instead.
 *
 * Teardown: destroy() in test.after.always / t.teardown. A process.on('exit')
 * hook does the same synchronously if a test process exits without it, and
 * createWorld() first sweeps worlds whose owning process was killed (see
 * OWNER_DIR and sweepStaleWorlds()).
 *
 * Setup failures throw with what is missing ("needs root", "no cgroup2
 * mount", "ip netns add failed: ..."); privileged tests never skip.
 */
import { type ChildProcess, execFile, execFileSync, type SpawnOptions, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import ipaddr from 'ipaddr.js';
import { ensureBpffs, findCgroup2Mount } from '../../daemon/kernel/system.js';

const execFileAsync = promisify(execFile);

/** The repository root: this file compiles to dist/test/helpers/world.js. */
export const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));
export const PROBE_PATH = path.join(REPO_ROOT, 'build', 'probe');
export const CONNECT_LOOP_PATH = path.join(REPO_ROOT, 'build', 'connect-loop');

/** Addresses on `lo` in the world namespace. */
export const WORLD_ADDRESSES = {
  v4: ['192.0.2.1', '192.0.2.2', '192.0.2.200', '198.51.100.1', '198.51.100.2', '203.0.113.1'],
  v6: ['2001:db8::1', '2001:db8::2', '2001:db8:1::1'],
  /** Every address in these ranges is local in the world namespace (AnyIP). */
  anyIp4: '203.0.113.0/24',
  anyIp6: '2001:db8:ff::/64',
  /** Not assigned and not routed: connect() fails with ENETUNREACH. */
  unreachable4: '192.0.2.99',
  unreachable6: '2001:db8::99',
} as const;

/** Ports of the world's server (TCP and UDP) unless createWorld({ ports }) says otherwise. */
export const WORLD_PORTS: readonly number[] = [80, 443, 5353, 8080];
/** A port nothing listens on in the world namespace: TCP connects fail with ECONNREFUSED. */
export const CLOSED_PORT = 9;

/**
 * One file per live world, `<id>` holding "<owner pid> <owner start time>",
 * so that sweepStaleWorlds() can remove what a killed test process left.
 */
export const OWNER_DIR = '/run/egressd-test';

/** Slower machines (a VM under emulation) scale every wait. */
export const SCALE = Number(process.env['EGRESSD_TEST_TIMEOUT_SCALE'] ?? 1);

const KILL_GRACE_MS = 2000 * SCALE;
const READY_TIMEOUT_MS = 5000 * SCALE;
const CGROUP_EMPTY_TIMEOUT_MS = 3000 * SCALE;

export interface WorldOptions {
  /** Ports of the world's server. @default WORLD_PORTS */
  ports?: readonly number[];
  /**
   * A veth link between the host namespace and the world, like the gateway
   * of a container: the host side is an address of this host that processes
   * in the world can reach (the DNS proxy listens there). @default false
   */
  gateway?: boolean;
}

/** Addresses of the veth link of createWorld({ gateway: true }), unique per world. */
export interface Gateway {
  hostIf: string;
  host4: string;
  world4: string;
  host6: string;
  world6: string;
}

export interface ProbeOptions {
  /**
   * The cgroup the probe joins: a name under the world's cgroup root ("c1",
   * "c1/child"), or an absolute path (e.g. makeCgroup(...).path). Default:
   * none (the probe stays in the test's cgroup).
   */
  cgroup?: string;
  /** true (default): the world namespace; false: the host namespace (loopback targets only); a string: that netns path. */
  netns?: boolean | string;
  /** Kill the probe and fail after this long. Default: 10 s plus the MS of every loop OP, times SCALE. */
  timeoutMs?: number;
}

/** One JSON line of the probe. `result` is "ok", an errno name, "ready" (serve), or "done" (loop). */
export interface ProbeResult {
  op: string;
  result: string;
  target?: string;
  /** serve, serve-lo */
  port?: number;
  /** loop: the repeated OP, how often each result came, iterations, duration */
  inner?: string;
  counts?: Record<string, number>;
  iterations?: number;
  elapsed_ms?: number;
}

export interface RunningProbe {
  pid: number;
  child: ChildProcess;
  /** Resolves once the probe is in its cgroup and netns. */
  ready: Promise<void>;
  /** The probe's lines once it exits (rejects on a non-zero exit). */
  results: Promise<ProbeResult[]>;
  /** Closes the probe's stdin (ending loops and servers), escalates to SIGTERM/SIGKILL, returns its lines. */
  stop(): Promise<ProbeResult[]>;
}

/** A connection or datagram seen by one of the world's servers. */
export interface ServerEvent {
  where: 'world' | 'host';
  event: 'accept' | 'recv';
  proto: 'tcp' | 'udp';
  port: number;
  /** Destination address the peer used (IPv4-mapped shown as IPv4). */
  local: string;
  /** "a.b.c.d:port" or "[v6]:port" */
  peer: string;
  bytes?: number;
}

export interface SpawnInWorldOptions {
  /** As in ProbeOptions: true (default) the world namespace, false the host's, or a netns path. */
  netns?: boolean | string;
  /** As in ProbeOptions. */
  cgroup?: string;
  stdio?: SpawnOptions['stdio'];
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

function hex(bytes: number): string {
  return randomBytes(bytes).toString('hex');
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function alive(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (!alive(child)) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

function errorText(err: unknown): string {
  const e = err as { stderr?: string | Buffer; message?: string };
  const stderr = e.stderr?.toString().trim();
  return stderr || e.message || String(err);
}

/** The address an OP sends to, or undefined for OPs without one (raw4, serve, ...). */
export function opTarget(op: string): string | undefined {
  let rest = op;
  while (rest.startsWith('loop:')) rest = rest.split(':').slice(3).join(':');
  const colon = rest.indexOf(':');
  if (colon < 0) return undefined;
  const kind = rest.slice(0, colon);
  const arg = rest.slice(colon + 1);
  if (kind.startsWith('serve')) return undefined;
  if (kind === 'ping4' || kind === 'ping6') return arg;
  if (arg.startsWith('[')) return arg.slice(1, arg.indexOf(']'));
  return arg.slice(0, arg.lastIndexOf(':'));
}

function isLoopbackTarget(addr: string): boolean {
  try {
    const range = ipaddr.process(addr).range();
    return range === 'loopback' || range === 'unspecified';
  } catch {
    return false;
  }
}

/** Field 22 of /proc/<pid>/stat (start time in clock ticks), or undefined when there is no such process. */
function processStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

function populated(cgroup: string): boolean {
  try {
    return /^populated 1$/m.test(readFileSync(path.join(cgroup, 'cgroup.events'), 'utf8'));
  } catch {
    return false;
  }
}

/** Every cgroup directory under `root`, deepest first, `root` last ([] if it does not exist). */
function cgroupTree(root: string): string[] {
  const dirs: string[] = [];
  const walk = (dir: string) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      if (e.isDirectory()) walk(path.join(dir, e.name));
    }
    dirs.push(dir);
  };
  if (existsSync(root)) walk(root);
  return dirs;
}

/**
 * Synchronous, best-effort removal of a world's kernel objects: kills what is
 * in its cgroups, removes them, its pins, its netns and its owner record.
 */
function removeWorldSync(id: string, cgroupMount: string): void {
  const attempt = (fn: () => void) => {
    try {
      fn();
    } catch {
      // best effort: the caller cannot do more
    }
  };
  const root = path.join(cgroupMount, `egressd-test-${id}`);
  attempt(() => {
    if (populated(root)) writeFileSync(path.join(root, 'cgroup.kill'), '1');
  });
  for (let i = 0; i < 100 && populated(root); i++) sleepSync(20);
  for (const dir of cgroupTree(root)) attempt(() => rmdirSync(dir));
  attempt(() => rmSync(`/sys/fs/bpf/egressd-test-${id}`, { recursive: true, force: true }));
  if (existsSync(`/run/netns/egt-${id}`)) {
    attempt(() => execFileSync('ip', ['netns', 'del', `egt-${id}`], { stdio: 'ignore' }));
  }
  attempt(() => rmSync(path.join(OWNER_DIR, id), { force: true }));
  removeOwnerDirIfEmpty();
}

function removeOwnerDirIfEmpty(): void {
  try {
    rmdirSync(OWNER_DIR);
  } catch {
    // not empty (another world is alive) or already gone
  }
}

/**
 * Removes worlds whose owning process is gone (killed before its teardown
 * ran). createWorld() calls it; worlds of live test processes are left alone.
 * Returns the ids it removed.
 */
export function sweepStaleWorlds(cgroupMount = findCgroup2Mount()): string[] {
  if (!existsSync(OWNER_DIR)) return [];
  const removed: string[] = [];
  for (const id of readdirSync(OWNER_DIR)) {
    if (!/^[0-9a-f]{6}$/.test(id)) continue;
    let owner: string[] = [];
    try {
      owner = readFileSync(path.join(OWNER_DIR, id), 'utf8').trim().split(' ');
    } catch {
      continue;
    }
    const [pid, start] = owner;
    if (pid && start && processStartTime(Number(pid)) === start) continue;
    removeWorldSync(id, cgroupMount);
    removed.push(id);
  }
  return removed;
}

function parseLines(text: string): ProbeResult[] {
  return text
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as ProbeResult);
}

export class World {
  /** The world's 6 hex digits, in every name it creates. */
  readonly id: string;
  /** Network namespace name, e.g. egt-1a2b3c. */
  readonly netnsName: string;
  /** /run/netns/<netnsName> */
  readonly netnsPath: string;
  /** Where cgroup2 is mounted (/sys/fs/cgroup/unified on this VM). */
  readonly cgroupMount: string;
  /** Absolute path of the world's cgroup subtree root. */
  readonly cgroupRoot: string;
  /** A fresh directory on bpffs for this world's pins. */
  readonly pinDir: string;
  /** Ports of the world's server in its namespace. */
  readonly ports: readonly number[];
  /** Port of the host-namespace server on 127.0.0.1 and ::1 (TCP and UDP); 0 until started. */
  hostLoopbackPort = 0;

  private readonly children = new Set<ChildProcess>();
  private readonly events: ServerEvent[] = [];
  private netnsCreated = false;
  private destroying: Promise<void> | undefined;
  private readonly exitHook = () => this.destroySync();

  constructor(id: string, cgroupMount: string, ports: readonly number[]) {
    this.id = id;
    this.netnsName = `egt-${id}`;
    this.netnsPath = `/run/netns/${this.netnsName}`;
    this.cgroupMount = cgroupMount;
    this.cgroupRoot = path.join(cgroupMount, `egressd-test-${id}`);
    this.pinDir = `/sys/fs/bpf/egressd-test-${id}`;
    this.ports = ports;
    process.on('exit', this.exitHook);
  }

  /** Path of `<cgroupRoot>/<name>` relative to the cgroup2 mount, without a leading slash. */
  cgroupRelative(name = ''): string {
    return path.relative(this.cgroupMount, path.join(this.cgroupRoot, name));
  }

  /** Creates `<cgroupRoot>/<name>` (nested names like "a/b" allowed; existing is fine). */
  makeCgroup(name: string): { path: string; relative: string } {
    const full = this.cgroupPath(name);
    mkdirSync(full, { recursive: true });
    return { path: full, relative: this.cgroupRelative(path.relative(this.cgroupRoot, full)) };
  }

  /** PIDs in a cgroup (a name under the root, or an absolute path). */
  cgroupProcs(name: string): number[] {
    return readFileSync(path.join(this.cgroupPath(name), 'cgroup.procs'), 'utf8')
      .split('\n')
      .filter((l) => l !== '')
      .map(Number);
  }

  /** Runs the probe to completion and returns its lines (throws on a non-zero exit or a timeout). */
  async probe(opts: ProbeOptions, ...ops: string[]): Promise<ProbeResult[]> {
    const running = this.startProbe(opts, ops, false);
    running.child.stdin?.end();
    return running.results;
  }

  /** Like probe(), but only the `result` of each line: e.g. ['ok', 'EPERM']. */
  async probeResults(opts: ProbeOptions, ...ops: string[]): Promise<string[]> {
    return (await this.probe(opts, ...ops)).map((r) => r.result);
  }

  /**
   * Starts a long-running probe (typically `loop:MS:MAX:OP` or `serve:PORT`)
   * with --until-stdin-eof; `stop()` ends it and returns its lines. The
   * world kills it in destroy() if the test does not.
   */
  spawnProbe(opts: ProbeOptions, ...ops: string[]): RunningProbe {
    return this.startProbe(opts, ops, true);
  }

  /**
   * Spawns any command in the world namespace (or as `netns` says), optionally
   * in a cgroup, and kills it in destroy(). Uses nsenter, never `ip netns
   * exec` (which hides /sys/fs/cgroup and /sys/fs/bpf).
   */
  spawn(command: string, args: readonly string[], opts: SpawnInWorldOptions = {}): ChildProcess {
    let argv = [command, ...args];
    if (opts.cgroup !== undefined) {
      const procs = path.join(this.cgroupPath(opts.cgroup), 'cgroup.procs');
      argv = ['sh', '-c', 'echo 0 > "$0" && exec "$@"', procs, ...argv];
    }
    const netns = this.netnsArg(opts.netns);
    if (netns) argv = ['nsenter', `--net=${netns}`, '--', ...argv];
    const child = spawn(argv[0]!, argv.slice(1), {
      stdio: opts.stdio ?? 'ignore',
      env: opts.env,
      cwd: opts.cwd,
    });
    this.track(child);
    return child;
  }

  /** Runs a command like spawn() to its end: exit code and stdout and stderr together. */
  async run(command: string, args: readonly string[], opts: Omit<SpawnInWorldOptions, 'stdio'> = {}) {
    const child = this.spawn(command, args, { ...opts, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout?.on('data', (d) => {
      out += d;
    });
    child.stderr?.on('data', (d) => {
      out += d;
    });
    // 'close', not 'exit': the output may still be in the pipes when the process has exited.
    const code: number = await new Promise((resolve) => child.once('close', (c) => resolve(c ?? 1)));
    return { code, out };
  }

  /** Connections and datagrams seen by the world's servers so far (at most the last 10000). */
  serverEvents(): ServerEvent[] {
    return [...this.events];
  }

  clearServerEvents(): void {
    this.events.length = 0;
  }

  /** Waits until a server event matches (bounded; throws on timeout). */
  async waitForServerEvent(
    match: (e: ServerEvent) => boolean,
    timeoutMs = 3000 * SCALE,
  ): Promise<ServerEvent> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.events.find(match);
      if (found) return found;
      if (Date.now() >= deadline) throw new Error(`no matching server event within ${timeoutMs} ms`);
      await sleep(20);
    }
  }

  /**
   * Removes everything the world made: kills its processes (SIGTERM, then
   * SIGKILL), kills what is left in its cgroups (cgroup.kill), removes the
   * cgroups deepest first, the bpffs directory with its pins, and the netns.
   * Idempotent; throws one error listing every step that failed.
   */
  destroy(): Promise<void> {
    this.destroying ??= this.doDestroy();
    return this.destroying;
  }

  /** The veth link to the host namespace, when createWorld({ gateway: true }). */
  gateway: Gateway | undefined;

  /** @internal Creates the veth pair; the world side goes with the netns, the host side is deleted in destroy(). */
  async addGateway(): Promise<void> {
    // One /30 of 192.0.2.128/26 and one /64 per world, from its id: concurrent worlds do not collide.
    const k = Number.parseInt(this.id.slice(0, 4), 16) % 16;
    const g: Gateway = {
      hostIf: `egh${this.id}`,
      host4: `192.0.2.${129 + 4 * k}`,
      world4: `192.0.2.${130 + 4 * k}`,
      host6: `2001:db8:53:${k.toString(16)}::1`,
      world6: `2001:db8:53:${k.toString(16)}::2`,
    };
    const worldIf = `egw${this.id}`;
    await this.ip(
      ['link', 'add', g.hostIf, 'type', 'veth', 'peer', 'name', worldIf, 'netns', this.netnsName],
      'ip link add veth',
    );
    this.gateway = g;
    await this.ip(['addr', 'add', `${g.host4}/30`, 'dev', g.hostIf], 'ip addr add (gateway)');
    await this.ip(['-6', 'addr', 'add', `${g.host6}/64`, 'dev', g.hostIf, 'nodad'], 'ip addr add (gateway)');
    await this.ip(['link', 'set', g.hostIf, 'up'], 'ip link set up (gateway)');
    const n = ['-n', this.netnsName];
    await this.ip([...n, 'addr', 'add', `${g.world4}/30`, 'dev', worldIf], 'ip addr add (world side)');
    await this.ip(
      [...n, '-6', 'addr', 'add', `${g.world6}/64`, 'dev', worldIf, 'nodad'],
      'ip addr add (world side)',
    );
    await this.ip([...n, 'link', 'set', worldIf, 'up'], 'ip link set up (world side)');
  }

  // ---- setup (called by createWorld) ----

  /** @internal */
  async setup(): Promise<void> {
    // Written whole, then renamed: a concurrent sweep never reads a half-written
    // record. Retried when another world's teardown removed the empty OWNER_DIR.
    const record = path.join(OWNER_DIR, this.id);
    for (let attempt = 0; ; attempt++) {
      try {
        mkdirSync(OWNER_DIR, { recursive: true });
        writeFileSync(`${record}.tmp`, `${process.pid} ${processStartTime(process.pid)}\n`);
        renameSync(`${record}.tmp`, record);
        break;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || attempt >= 5) throw err;
      }
    }
    try {
      ensureBpffs(this.pinDir);
    } catch (err) {
      throw new Error(`no bpffs at /sys/fs/bpf: ${errorText(err)}`, { cause: err });
    }
    mkdirSync(this.pinDir);
    mkdirSync(this.cgroupRoot);
    await this.ip(['netns', 'add', this.netnsName], 'ip netns add failed');
    this.netnsCreated = true;
    const n = ['-n', this.netnsName];
    await this.ip([...n, 'link', 'set', 'lo', 'up'], 'bringing up lo failed');
    for (const a of WORLD_ADDRESSES.v4)
      await this.ip([...n, 'addr', 'add', `${a}/32`, 'dev', 'lo'], 'ip addr add');
    for (const a of WORLD_ADDRESSES.v6) {
      await this.ip([...n, '-6', 'addr', 'add', `${a}/128`, 'dev', 'lo', 'nodad'], 'ip addr add');
    }
    await this.ip([...n, 'route', 'add', 'local', WORLD_ADDRESSES.anyIp4, 'dev', 'lo'], 'ip route add');
    await this.ip([...n, '-6', 'route', 'add', 'local', WORLD_ADDRESSES.anyIp6, 'dev', 'lo'], 'ip route add');
    try {
      await execFileAsync('nsenter', [
        `--net=${this.netnsPath}`,
        'sysctl',
        '-q',
        '-w',
        'net.ipv4.ping_group_range=0 2147483647',
      ]);
    } catch (err) {
      throw new Error(`setting net.ipv4.ping_group_range in ${this.netnsName} failed: ${errorText(err)}`);
    }
    await this.startServer(
      'world',
      ['--netns', this.netnsPath],
      this.ports.map((p) => `serve:${p}`),
    );
    const host = await this.startServer('host', [], ['serve-lo:0']);
    this.hostLoopbackPort = host[0]?.port ?? 0;
  }

  private async ip(args: string[], what: string): Promise<void> {
    try {
      await execFileAsync('ip', args);
    } catch (err) {
      throw new Error(`${what}: ip ${args.join(' ')}: ${errorText(err)}`);
    }
  }

  private async startServer(where: 'world' | 'host', pre: string[], ops: string[]): Promise<ProbeResult[]> {
    const child = spawn(PROBE_PATH, [...pre, '--report', ...ops], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.track(child);
    // A server must not keep the test process alive; it exits by itself on
    // stdin EOF when the test process goes away.
    child.unref();
    for (const s of [child.stdin, child.stdout, child.stderr])
      (s as { unref?: () => void } | null)?.unref?.();
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    const ready: ProbeResult[] = [];
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`${where} server did not become ready in ${READY_TIMEOUT_MS} ms: ${stderr}`)),
        READY_TIMEOUT_MS,
      );
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`${where} server exited (${code ?? signal}) before it was ready: ${stderr}`));
      });
      child.once('error', (err) => {
        clearTimeout(timer);
        reject(new Error(`cannot start ${PROBE_PATH}: ${err.message}`));
      });
      createInterface({ input: child.stdout! }).on('line', (line) => {
        const msg = JSON.parse(line) as ProbeResult & Partial<ServerEvent>;
        if (msg.event) {
          if (this.events.length >= 10000) this.events.shift();
          this.events.push({ ...(msg as unknown as ServerEvent), where });
          return;
        }
        if (msg.result !== 'ready') {
          clearTimeout(timer);
          reject(new Error(`${where} server ${msg.op}:${msg.port} failed: ${msg.result}`));
          return;
        }
        ready.push(msg);
        if (ready.length === ops.length) {
          clearTimeout(timer);
          resolve(ready);
        }
      });
    });
  }

  // ---- probes ----

  private cgroupPath(name: string): string {
    const full = path.isAbsolute(name) ? path.normalize(name) : path.join(this.cgroupRoot, name);
    if (!path.isAbsolute(name) && !`${full}/`.startsWith(`${this.cgroupRoot}/`)) {
      throw new Error(`cgroup name "${name}" leaves the world's cgroup root`);
    }
    return full;
  }

  private netnsArg(netns: boolean | string | undefined): string | undefined {
    if (netns === undefined || netns === true) return this.netnsPath;
    return netns === false ? undefined : netns;
  }

  private startProbe(opts: ProbeOptions, ops: string[], longRunning: boolean): RunningProbe {
    if (this.destroying) throw new Error('the world is destroyed');
    const netns = this.netnsArg(opts.netns);
    if (!netns) {
      for (const op of ops) {
        const target = opTarget(op);
        if (target !== undefined && !isLoopbackTarget(target)) {
          throw new Error(
            `probe in the host namespace may only target loopback, not "${op}": run it in the world namespace`,
          );
        }
      }
    }
    const args = ['--announce'];
    if (opts.cgroup !== undefined) args.push('--cgroup', this.cgroupPath(opts.cgroup));
    if (netns) args.push('--netns', netns);
    if (longRunning) args.push('--until-stdin-eof');
    args.push(...ops);
    const loopMs = ops
      .filter((op) => op.startsWith('loop:'))
      .reduce((sum, op) => sum + Number(op.split(':')[1] ?? 0), 0);
    const timeoutMs = opts.timeoutMs ?? (10_000 + loopMs) * SCALE;

    const child = spawn(PROBE_PATH, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    this.track(child);
    let stdout = '';
    let stderr = '';
    let onJoined: () => void = () => {};
    let onJoinFailed: (err: Error) => void = () => {};
    const ready = new Promise<void>((resolve, reject) => {
      onJoined = resolve;
      onJoinFailed = reject;
    });
    ready.catch(() => {}); // observed through `results` too
    child.stdout?.on('data', (d: Buffer) => {
      stdout += d.toString();
      if (stdout.includes('"op":"joined"')) onJoined();
    });
    child.stderr?.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    child.stdin?.on('error', () => {}); // EPIPE when the probe is already gone
    const describe = () => `probe ${args.join(' ')}`;
    const results = new Promise<ProbeResult[]>((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(
          new Error(`${describe()} timed out after ${timeoutMs} ms; stdout: ${stdout} stderr: ${stderr}`),
        );
      }, timeoutMs);
      child.once('error', (err) => {
        clearTimeout(timer);
        reject(new Error(`cannot start ${PROBE_PATH} (run bash scripts/build.sh): ${err.message}`));
      });
      child.once('close', (code, signal) => {
        clearTimeout(timer);
        if (code !== 0) {
          const err = new Error(`${describe()} exited with ${code ?? signal}: ${stderr.trim()}`);
          onJoinFailed(err);
          reject(err);
          return;
        }
        try {
          resolve(parseLines(stdout).filter((r) => r.op !== 'joined'));
        } catch (err) {
          reject(new Error(`${describe()} printed unparsable output: ${stdout}`, { cause: err }));
        }
      });
    });
    results.catch(() => {}); // a probe killed by destroy() must not be an unhandled rejection
    const stop = async (): Promise<ProbeResult[]> => {
      child.stdin?.end();
      if (!(await waitExit(child, 5000))) {
        child.kill('SIGTERM');
        if (!(await waitExit(child, KILL_GRACE_MS))) child.kill('SIGKILL');
      }
      return results;
    };
    return { pid: child.pid ?? -1, child, ready, results, stop };
  }

  private track(child: ChildProcess): void {
    this.children.add(child);
    child.once('exit', () => this.children.delete(child));
  }

  // ---- teardown ----

  private async doDestroy(): Promise<void> {
    const errors: string[] = [];
    const step = async (what: string, fn: () => unknown) => {
      try {
        await fn();
      } catch (err) {
        errors.push(`${what}: ${errorText(err)}`);
      }
    };

    await step('stopping processes', async () => {
      const children = [...this.children].filter(alive);
      for (const c of children) c.kill('SIGTERM');
      const exited = await Promise.all(children.map((c) => waitExit(c, KILL_GRACE_MS)));
      const stubborn = children.filter((_, i) => !exited[i]);
      for (const c of stubborn) c.kill('SIGKILL');
      await Promise.all(stubborn.map((c) => waitExit(c, KILL_GRACE_MS)));
    });

    await step('emptying cgroups', async () => {
      if (!existsSync(this.cgroupRoot)) return;
      if (populated(this.cgroupRoot)) writeFileSync(path.join(this.cgroupRoot, 'cgroup.kill'), '1');
      const deadline = Date.now() + CGROUP_EMPTY_TIMEOUT_MS;
      while (populated(this.cgroupRoot)) {
        if (Date.now() >= deadline)
          throw new Error(`processes remain in ${this.cgroupRoot} after cgroup.kill`);
        await sleep(20);
      }
    });
    await step('removing cgroups', () => {
      for (const dir of cgroupTree(this.cgroupRoot)) rmdirSync(dir);
    });
    await step('removing pins', () => rmSync(this.pinDir, { recursive: true, force: true }));
    if (this.netnsCreated) {
      await step('checking netns', async () => {
        const { stdout } = await execFileAsync('ip', ['netns', 'pids', this.netnsName]);
        const pids = stdout.split('\n').filter((l) => l.trim() !== '');
        if (pids.length) {
          throw new Error(
            `processes the world did not start are still in ${this.netnsName}: ${pids.join(' ')}; stop them in your teardown`,
          );
        }
      });
      await step('removing netns', async () => {
        await execFileAsync('ip', ['netns', 'del', this.netnsName]);
        this.netnsCreated = false;
      });
    }
    const hostIf = this.gateway?.hostIf;
    if (hostIf) {
      // Normally gone with the netns (a veth pair dies with either end).
      await step('removing the gateway link', async () => {
        const { stdout } = await execFileAsync('ip', ['-o', 'link', 'show']);
        if (!stdout.includes(`${hostIf}@`)) return;
        // The kernel may finish removing it between the two commands.
        await execFileAsync('ip', ['link', 'del', hostIf]).catch((err: { stderr?: string }) => {
          if (!/Cannot find device/.test(err.stderr ?? '')) throw err;
        });
      });
    }
    process.off('exit', this.exitHook);
    if (!errors.length) {
      rmSync(path.join(OWNER_DIR, this.id), { force: true });
      removeOwnerDirIfEmpty();
    }
    if (errors.length) throw new Error(`world ${this.netnsName} teardown: ${errors.join('; ')}`);
  }

  /** Best-effort synchronous cleanup for process exit (when destroy() was never called or not finished). */
  private destroySync(): void {
    for (const c of this.children) {
      if (!alive(c)) continue;
      try {
        c.kill('SIGKILL');
      } catch {
        // already gone
      }
    }
    removeWorldSync(this.id, this.cgroupMount);
  }
}

/** Creates a world (see the top of this file); throws with a clear reason when the host cannot. */
export async function createWorld(opts: WorldOptions = {}): Promise<World> {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    throw new Error('the test world needs root (cgroups, network namespaces, bpffs): run the tests as root');
  }
  if (!existsSync(PROBE_PATH)) throw new Error(`${PROBE_PATH} is missing: run bash scripts/build.sh first`);
  let mount: string;
  try {
    mount = findCgroup2Mount();
  } catch (err) {
    throw new Error(`no cgroup2 mount: ${errorText(err)}`, { cause: err });
  }
  sweepStaleWorlds(mount);
  const world = new World(hex(3), mount, opts.ports ?? WORLD_PORTS);
  try {
    await world.setup();
    if (opts.gateway) await world.addGateway();
  } catch (err) {
    await world.destroy().catch(() => {});
    throw err;
  }
  return world;
}

/** Creates a world before the file's tests and destroys it after them (even on failure). */
export async function withWorld(test: {
  after: { always: (fn: () => Promise<void>) => void };
}): Promise<World> {
  const world = await createWorld();
  test.after.always(() => world.destroy());
  return world;
}
