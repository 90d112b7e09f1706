/**
 * Agent benchmarks at scale, with real components (redis-server with its
 * append-only file fsynced every second, BPF, cgroups of the test world):
 *
 *  1. Sustained policy changes: the real `egressd all` in a process of its
 *     own; RATE PUTs per second for SECONDS, each rate of --rates in turn on
 *     the same process, open loop (each request is sent on its schedule,
 *     whatever the answers before it did), spread round-robin over N
 *     computers with R-rule allowlists, every PUT a real change, each waiting
 *     for enforcement (?wait=10000: 200 once the agent acknowledged, 202 if
 *     not within 10 s). Reported: the rate offered and the rate enforced, the
 *     enforcement lag measured client-side as the time from a request's
 *     scheduled send to its 200 (so a client or server falling behind shows
 *     up in the figure), p50/p99/max, against the same PUT on an idle egressd
 *     in the same run; non-200 answers, errors and timeouts; the agent's own
 *     egressd_enforcement_lag_seconds histogram (change record written →
 *     enforced) from /metrics over the load; the CPU time of egressd's API
 *     and agent processes, redis-server and this load generator, the API's
 *     event-loop delay, and
 *     Redis commands per second: what limits the rate when it is not reached.
 *     --profile runs egressd with --cpu-prof and prints where the time of its
 *     API and agent processes went.
 *  2. Cold resync (run first): N computers × 100 rules registered in Redis,
 *     then a fresh agent (in this process) with no pins starts; time to the
 *     end of its first full resync, its RSS, and the kernel memory of the maps.
 *
 *   sudo node dist/bench/agent.js [--rates 250,500,1000] [--seconds 10] [--load-computers 100]
 *                                 [--load-rules 100] [--idle-puts 100] [--profile]
 *                                 [--computers 10000]
 *   (--rates 0 or --computers 0 skips that part)
 */

import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import type { Reply } from '../api/client.js';
import { Agent } from '../daemon/agent/agent.js';
import { Enforcer } from '../daemon/kernel/enforcer.js';
import type { Rule } from '../policy/types.js';
import { Store } from '../store/store.js';
import { type Egressd, startEgressd } from '../test/helpers/egressd.js';
import { startRedis, type TestRedis } from '../test/helpers/redis.js';
import { createWorld, type World } from '../test/helpers/world.js';
import { benchOptions, machine, runBenchmark, writeResults } from './common.js';
import { BenchClient, cpuSeconds, failure, histogramDelta, percentile, round } from './egressd.js';

const OPTIONS = benchOptions(
  'sudo node dist/bench/agent.js',
  'Sustained policy changes against egressd all, and a cold resync of many computers.',
  {
    rates: { type: 'numbers', default: [250, 500, 1000], help: 'PUTs per second, one load each (0: none)' },
    seconds: { type: 'number', default: 10, help: 'length of each load' },
    'load-computers': { type: 'number', default: 100, help: 'computers the load is spread over' },
    'load-rules': { type: 'number', default: 100, help: "rules of each load computer's allowlist" },
    'idle-puts': { type: 'number', default: 100, help: 'PUTs of the idle baseline' },
    profile: { type: 'flag', help: 'run egressd with --cpu-prof and summarize where its time went' },
    computers: { type: 'number', default: 10_000, help: 'computers of the cold resync (0: none)' },
  },
);
const RATES = OPTIONS.rates.filter((n) => Number.isInteger(n) && n > 0);
const SECONDS = OPTIONS.seconds;
const LOAD_COMPUTERS = OPTIONS['load-computers'];
const LOAD_RULES = OPTIONS['load-rules'];
const IDLE_PUTS = OPTIONS['idle-puts'];
const PROFILE = OPTIONS.profile;
const COMPUTERS = OPTIONS.computers;
/** How long each PUT of the sustained load waits for enforcement (then 202). */
const WAIT_MS = 10_000;
/** The client gives up on an answer after this long. */
const CLIENT_TIMEOUT_MS = 30_000;
/** At most this many connections to egressd; further requests queue in the client (and their lag counts it). */
const MAX_SOCKETS = 512;
const log = pino({ level: 'silent' });

function rules(seed: number): Rule[] {
  return Array.from({ length: 100 }, (_, i) => ({
    host: `10.${seed & 255}.${i}.0/24`,
    protocol: i % 2 ? 'tcp' : 'any',
    ...(i % 3 ? { port: 443 } : {}),
  }));
}

/** `n` rules of computer `c`; `change` makes every request's policy differ (the first rule's port). */
function loadRules(c: number, n: number, change: number): Rule[] {
  return Array.from({ length: n }, (_, i) => ({
    host: `10.${c & 255}.${(i >>> 8) & 255}.${i & 255}/32`,
    protocol: 'tcp',
    port: i === 0 ? 1 + (change % 65535) : 443,
  }));
}

function mapMemoryBytes(pinDir: string): number {
  let total = 0;
  for (const name of [
    'computers',
    'rules_v4',
    'rules_v6',
    'rule_ports',
    'internal_v4',
    'internal_v6',
    'config',
  ]) {
    const info = JSON.parse(
      execFileSync('bpftool', ['-j', 'map', 'show', 'pinned', `${pinDir}/maps/${name}`]).toString(),
    );
    total += Number(info.bytes_memlock ?? 0);
  }
  return total;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const msSince = (t: bigint) => Number(process.hrtime.bigint() - t) / 1e6;

interface Outcome {
  /** ms from the scheduled send to the answer's headers */
  lagMs: number;
  /** ms the request went out later than scheduled (the client's own lag) */
  lateMs: number;
  status: number;
  /** ms from the start of the load to the answer */
  atMs: number;
  /** ms from the start of the load to the scheduled send */
  scheduledMs: number;
}

/** Self time of a .cpuprofile: the top functions, and by part (API, agent, packages, Node, GC, idle), in %. */
function profileSummary(file: string, top: number) {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as {
    nodes: { id: number; callFrame: { functionName: string; url: string; lineNumber: number } }[];
    samples: number[];
  };
  const byId = new Map(profile.nodes.map((n) => [n.id, n.callFrame]));
  const fns = new Map<string, number>();
  const parts = new Map<string, number>();
  const add = (m: Map<string, number>, k: string) => m.set(k, (m.get(k) ?? 0) + 1);
  for (const id of profile.samples) {
    const f = byId.get(id);
    const url = f?.url ?? '';
    const where = url.replace(/^.*\/(dist|node_modules)\//, '$1/');
    add(fns, `${f?.functionName || '(anonymous)'}${url ? ` ${where}:${(f?.lineNumber ?? 0) + 1}` : ''}`);
    let part: string;
    if (where.startsWith('dist/api/')) part = 'API (dist/api)';
    else if (where.startsWith('dist/daemon/')) part = 'agent (dist/daemon)';
    else if (/^node_modules\/(ioredis|redis-parser|denque|standard-as-callback)\//.test(where))
      part = 'ioredis (packages)';
    else if (/^node_modules\/zod\//.test(where)) part = 'zod (package)';
    else if (where.startsWith('node_modules/')) part = 'other packages (koa, prom-client, ...)';
    else if (url.startsWith('node:')) part = 'Node.js library (node:*)';
    else if (f?.functionName === '(idle)') part = 'idle';
    else if (f?.functionName === '(garbage collector)') part = 'garbage collector';
    else part = 'native and V8 (JSON, string writes, syscalls, program)';
    add(parts, part);
  }
  const pct = (n: number) => round((100 * n) / profile.samples.length, 1);
  const sorted = (m: Map<string, number>) => [...m.entries()].sort((a, b) => b[1] - a[1]);
  return {
    parts: sorted(parts).map(([part, n]) => ({ self_pct: pct(n), part })),
    functions: sorted(fns)
      .slice(0, top)
      .map(([fn, n]) => ({ self_pct: pct(n), function: fn })),
  };
}

/** Calls per Redis command so far (INFO commandstats). */
async function commandCalls(store: Store): Promise<Map<string, number>> {
  const calls = new Map<string, number>();
  for (const m of (await store.redis.info('commandstats')).matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm))
    calls.set(m[1]!, Number(m[2]));
  return calls;
}

interface Load {
  egressd: Egressd;
  store: Store;
  redisPid: number;
  put: (i: number, payload: string, wait: number) => Promise<Reply>;
  body: (i: number, change: number) => string;
  idleP50: number;
}

/** RATE PUTs per second for SECONDS, open loop; figures for one row of each table. */
async function loadAt(l: Load, rate: number, firstChange: number) {
  // Request k goes out at start + k / rate seconds. Bodies are made before.
  const total = rate * SECONDS;
  const bodies = Array.from({ length: total }, (_, k) => l.body(k % LOAD_COMPUTERS, firstChange + k));
  const outcomes: Outcome[] = [];
  const failures = new Map<string, number>();
  let inFlight = 0;
  let maxInFlight = 0;
  const before = await l.egressd.metrics();
  const callsBefore = await commandCalls(l.store);
  const agentPid = l.egressd.helpers().agent;
  if (agentPid === undefined) throw new Error('egressd all has no agent process');
  const cpuBefore = {
    egressd: cpuSeconds(l.egressd.pid),
    agent: cpuSeconds(agentPid),
    redis: cpuSeconds(l.redisPid),
    bench: process.cpuUsage(),
  };
  const start = process.hrtime.bigint();
  const pending: Promise<void>[] = [];
  const issue = (k: number) => {
    const scheduled = start + BigInt(Math.round((k * 1e9) / rate));
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    pending.push(
      l.put(k % LOAD_COMPUTERS, bodies[k]!, WAIT_MS).then(
        (r) => {
          inFlight--;
          outcomes.push({
            lagMs: Number(r.headersAt - scheduled) / 1e6,
            lateMs: Number(r.sentAt - scheduled) / 1e6,
            status: r.status,
            atMs: Number(r.headersAt - start) / 1e6,
            scheduledMs: Number(scheduled - start) / 1e6,
          });
        },
        (err: unknown) => {
          inFlight--;
          const key = failure(err);
          failures.set(key, (failures.get(key) ?? 0) + 1);
        },
      ),
    );
  };
  let issued = 0;
  while (issued < total) {
    const due = Math.min(total, Math.floor((msSince(start) * rate) / 1000) + 1);
    while (issued < due) issue(issued++);
    await sleep(1);
  }
  const issueSeconds = msSince(start) / 1000;
  const cpuIssued = {
    egressd: cpuSeconds(l.egressd.pid),
    agent: cpuSeconds(agentPid),
    redis: cpuSeconds(l.redisPid),
    bench: process.cpuUsage(cpuBefore.bench),
  };
  const callsIssued = await commandCalls(l.store);
  // egressd's event-loop delay over the window (prom-client resets it at each scrape).
  const mid = await l.egressd.metrics();
  const loopDelay = (q: string) =>
    round((mid.get(`egressd_api_process_nodejs_eventloop_lag_${q}_seconds`) ?? Number.NaN) * 1000);
  await Promise.all(pending);
  const allSeconds = msSince(start) / 1000;
  const after = await l.egressd.metrics();

  const ok = outcomes.filter((o) => o.status === 200);
  // Answers that arrived from the end of the first second to the end of sending: the rate enforced
  // once the load runs (≈ the offered rate when egressd keeps up; its service rate when a backlog grows).
  const steady = ok.filter((o) => o.atMs >= 1000 && o.atMs <= issueSeconds * 1000).length;
  const statuses: Record<string, number> = {};
  for (const o of outcomes) statuses[o.status] = (statuses[o.status] ?? 0) + 1;
  const agentLag = histogramDelta(before, after, 'egressd_enforcement_lag_seconds', [0.5, 0.99]);
  const apply = histogramDelta(before, after, 'egressd_policy_apply_seconds', [0.5, 0.99]);
  const benchCpu = (cpuIssued.bench.user + cpuIssued.bench.system) / 1e6;
  const load = {
    target_per_s: rate,
    seconds: SECONDS,
    issued,
    offered_per_s: round(issued / issueSeconds, 0),
    enforced_200: ok.length,
    enforced_per_s_steady: round(steady / (issueSeconds - 1), 0),
    enforced_per_s_overall: round(ok.length / allSeconds, 0),
    pending_202: statuses['202'] ?? 0,
    other_status: outcomes.length - ok.length - (statuses['202'] ?? 0),
    errors: [...failures.entries()].filter(([k]) => k !== 'timeout').reduce((s, [, n]) => s + n, 0),
    timeouts: failures.get('timeout') ?? 0,
    max_in_flight: maxInFlight,
    client_late_p99_ms: round(
      percentile(
        outcomes.map((o) => o.lateMs),
        99,
      ),
    ),
  };
  const row = (measure: string, lags: number[]) => ({
    measure,
    n: lags.length,
    p50_ms: round(percentile(lags, 50)),
    p99_ms: round(percentile(lags, 99)),
    max_ms: round(Math.max(...lags)),
    p50_ratio: round(percentile(lags, 50) / l.idleP50),
  });
  const histogramRow = (measure: string, h: ReturnType<typeof histogramDelta>, digits: number) => ({
    measure,
    n: h.count,
    p50_ms: round(h.quantiles[0]! * 1000, digits),
    p99_ms: round(h.quantiles[1]! * 1000, digits),
    max_ms: Number.NaN,
    p50_ratio: Number.NaN,
    mean_ms: round(h.mean * 1000, digits),
  });
  const lag = [
    row(
      `${rate}/s: scheduled send → 200`,
      ok.map((o) => o.lagMs),
    ),
    row(
      `${rate}/s:   of those scheduled in the first second`,
      ok.filter((o) => o.scheduledMs < 1000).map((o) => o.lagMs),
    ),
    row(
      `${rate}/s:   of those scheduled in the last second`,
      ok.filter((o) => o.scheduledMs >= (SECONDS - 1) * 1000).map((o) => o.lagMs),
    ),
    histogramRow(`${rate}/s: agent histogram, change record → enforced`, agentLag, 2),
    histogramRow(`${rate}/s: agent histogram, kernel apply per computer`, apply, 3),
  ];
  const cpu = {
    target_per_s: rate,
    window_s: round(issueSeconds, 1),
    api_pct_of_a_core: round((100 * (cpuIssued.egressd - cpuBefore.egressd)) / issueSeconds, 0),
    agent_pct_of_a_core: round((100 * (cpuIssued.agent - cpuBefore.agent)) / issueSeconds, 0),
    redis_pct_of_a_core: round((100 * (cpuIssued.redis - cpuBefore.redis)) / issueSeconds, 0),
    load_generator_pct_of_a_core: round((100 * benchCpu) / issueSeconds, 0),
    api_event_loop_delay_p50_ms: loopDelay('p50'),
    api_event_loop_delay_p99_ms: loopDelay('p99'),
    api_event_loop_delay_max_ms: loopDelay('max'),
  };
  const redisCommands = new Map<string, number>();
  for (const [command, n] of callsIssued) {
    const perS = round((n - (callsBefore.get(command) ?? 0)) / issueSeconds, 0);
    if (perS > 0) redisCommands.set(command, perS);
  }
  return { load, lag, cpu, redisCommands, failures: Object.fromEntries(failures) };
}

async function sustained(world: World, redis: TestRedis, store: Store, redisPid: number) {
  const profDir = PROFILE ? mkdtempSync(path.join(tmpdir(), 'egressd-bench-prof-')) : undefined;
  let egressd: Egressd | undefined;
  let bench: BenchClient | undefined;
  try {
    const options = { world, redisUrl: redis.url, node: 'bench-load' };
    egressd = await startEgressd(options);
    bench = new BenchClient(egressd, MAX_SOCKETS, CLIENT_TIMEOUT_MS);
    const body = (i: number, change: number) =>
      JSON.stringify({ mode: 'allowlist', rules: loadRules(i, LOAD_RULES, change) });
    const put = (i: number, payload: string, wait: number) => bench!.putPolicy(`load-${i}`, payload, wait);
    for (let i = 0; i < LOAD_COMPUTERS; i++) {
      const cg = world.makeCgroup(`load/c${i}`);
      await bench.computers.put(`load-${i}`, { cgroup: cg.relative });
      const p = await put(i, body(i, 0), WAIT_MS);
      if (p.status !== 200) throw new Error(`first policy of load-${i}: ${p.status} ${p.text}`);
    }
    let change = 1;
    if (profDir) {
      // Profiled from here on. Not from the start: the profiler's signals would keep interrupting the
      // BPF verifier (EAGAIN); this second egressd adopts the programs the first one pinned.
      bench.close();
      await egressd.stop();
      egressd = await startEgressd({ ...options, nodeArgs: ['--cpu-prof', '--cpu-prof-dir', profDir] });
      bench = new BenchClient(egressd, MAX_SOCKETS, CLIENT_TIMEOUT_MS);
    }

    // Baseline: the same PUT, one at a time, on an otherwise idle egressd.
    const idle: number[] = [];
    for (let k = 0; k < IDLE_PUTS; k++) {
      const i = k % LOAD_COMPUTERS;
      const r = await put(i, body(i, change++), WAIT_MS);
      if (r.status !== 200) throw new Error(`idle PUT answered ${r.status}`);
      idle.push(Number(r.headersAt - r.sentAt) / 1e6);
    }
    const idleP50 = percentile(idle, 50);
    const l: Load = { egressd, store, redisPid, put, body, idleP50 };
    const runs: Awaited<ReturnType<typeof loadAt>>[] = [];
    for (const rate of RATES) {
      runs.push(await loadAt(l, rate, change));
      change += rate * SECONDS;
      await sleep(1000);
    }
    await egressd.stop();
    // One profile per process, named CPU.<date>.<time>.<pid>.<thread>.<n>.cpuprofile.
    const profiles: ({ process: string } & ReturnType<typeof profileSummary>)[] = [];
    if (profDir) {
      for (const file of readdirSync(profDir).filter((f) => f.endsWith('.cpuprofile'))) {
        const pid = Number(file.split('.')[3]);
        const name = pid === egressd.pid ? 'API (egressd all)' : 'agent process';
        profiles.push({ process: name, ...profileSummary(path.join(profDir, file), 15) });
      }
    }
    const commands = new Set(runs.flatMap((r) => [...r.redisCommands.keys()]));
    const last = runs.at(-1)?.redisCommands;
    const redisCommands = [...commands]
      .sort((a, b) => (last?.get(b) ?? 0) - (last?.get(a) ?? 0))
      .slice(0, 10)
      .map((command) => ({
        command,
        ...Object.fromEntries(
          runs.map((r) => [`${r.load.target_per_s}/s`, r.redisCommands.get(command) ?? 0]),
        ),
      }));
    return {
      computers: LOAD_COMPUTERS,
      rules_each: LOAD_RULES,
      wait_ms: WAIT_MS,
      load: runs.map((r) => r.load),
      lag: [
        {
          measure: 'idle: PUT → 200, one at a time (baseline)',
          n: idle.length,
          p50_ms: round(idleP50),
          p99_ms: round(percentile(idle, 99)),
          max_ms: round(Math.max(...idle)),
          p50_ratio: 1,
        },
        ...runs.flatMap((r) => r.lag),
      ],
      cpu: runs.map((r) => r.cpu),
      redisCommands,
      failures: runs.map((r) => r.failures),
      profiles,
    };
  } finally {
    bench?.close();
    await egressd?.stop();
    if (profDir) rmSync(profDir, { recursive: true, force: true });
  }
}

async function coldResync(world: World, apiStore: Store, redisUrl: string) {
  const prepStart = Date.now();
  for (let i = 0; i < COMPUTERS; i++) {
    const c = world.makeCgroup(`many/c${i}`);
    await apiStore.putComputer(`c${i}`, { cgroup: c.relative, node: 'bench' });
    await apiStore.putPolicy(`c${i}`, { mode: 'allowlist', rules: rules(i) });
  }
  const prepMs = Date.now() - prepStart;
  const coldPins = `${world.pinDir}/cold`;
  const enforcer = Enforcer.open({ pinDir: coldPins, cgroupRoot: world.cgroupMount });
  const agentStore = new Store({ url: redisUrl });
  let agent: Agent | undefined;
  try {
    await agentStore.connect();
    agent = new Agent({ store: agentStore, enforcer, node: 'bench', cgroupRoot: world.cgroupMount, log });
    const rssBefore = process.memoryUsage().rss;
    const start = Date.now();
    await agent.start();
    const resyncMs = Date.now() - start;
    const enforcedCount = agent.report().filter((c) => c.state === 'enforced').length;
    const resync = {
      computers: COMPUTERS,
      rules_each: 100,
      enforced: enforcedCount,
      resync_s: +(resyncMs / 1000).toFixed(2),
      rss_mib: +(process.memoryUsage().rss / 2 ** 20).toFixed(0),
      rss_growth_mib: +((process.memoryUsage().rss - rssBefore) / 2 ** 20).toFixed(0),
      map_memory_mib: +(mapMemoryBytes(coldPins) / 2 ** 20).toFixed(1),
      setup_s: +(prepMs / 1000).toFixed(1),
    };
    // Detach everything before the world goes (its cgroups are removed with the world).
    for (const c of enforcer.list()) enforcer.detach(c.id);
    await enforcer.sweep();
    return resync;
  } finally {
    await agent?.stop();
    await agentStore.close();
    enforcer.close();
  }
}

async function main(): Promise<void> {
  let world: World | undefined;
  let redis: TestRedis | undefined;
  let apiStore: Store | undefined;
  try {
    world = await createWorld();
    redis = await startRedis({ appendfsync: 'everysec' });
    apiStore = new Store({ url: redis.url });
    await apiStore.connect();
    const redisPid = Number(/process_id:(\d+)/.exec(await apiStore.redis.info('server'))?.[1]);
    // The resync first, while this process is fresh (its RSS is one of the figures).
    const resync = COMPUTERS > 0 ? await coldResync(world, apiStore, redis.url) : undefined;
    const load = RATES.length > 0 ? await sustained(world, redis, apiStore, redisPid) : undefined;

    const host = machine();
    console.log(`agent benchmarks; machine: ${host}; redis-server appendfsync everysec`);
    if (load) {
      console.log(
        `sustained policy changes: egressd all in its own process; ${RATES.join(', ')} PUT/s, ${SECONDS} s each, open loop over ${LOAD_COMPUTERS} computers, ${LOAD_RULES}-rule allowlists, each PUT ?wait=${WAIT_MS} (200 = enforced)`,
      );
      console.table(load.load);
      for (const r of load.load) {
        const { target_per_s: target, offered_per_s: offered, enforced_per_s_steady: enforced } = r;
        const all = r.enforced_200 === r.issued;
        console.log(
          enforced >= 0.98 * target && offered >= 0.98 * target && all
            ? `${target}/s: sustained (${enforced}/s answered 200 from 1 s to the end of sending, every PUT answered 200)`
            : `${target}/s: NOT sustained: ${offered}/s offered, ${enforced}/s answered 200 (enforced) from 1 s to the end of sending${all ? '' : `, ${r.issued - r.enforced_200} PUTs not answered 200`}; see CPU, Redis and profile below`,
        );
      }
      console.log(
        'enforcement lag, ms (p50_ratio: against the idle baseline of this run; histogram quantiles interpolated within buckets, as histogram_quantile() does)',
      );
      console.table(load.lag);
      console.log(
        "CPU during the load window, % of one core (the machine has 2), and the delay of the API's event loop (the agent has a process of its own)",
      );
      console.table(load.cpu);
      console.log('Redis commands per second during the load window');
      console.table(load.redisCommands);
      if (load.failures.some((f) => Object.keys(f).length)) console.log('request failures:', load.failures);
      for (const profile of load.profiles) {
        console.log(`egressd CPU profile, ${profile.process} (idle baseline and every load), self time`);
        console.table(profile.parts);
        console.table(profile.functions);
      }
    }
    if (resync) {
      console.log('cold resync');
      console.table([resync]);
    }
    writeResults('agent', { machine: host, sustained: load, resync });
  } finally {
    await apiStore?.close();
    await redis?.cleanup();
    await world?.destroy();
  }
}

await runBenchmark(main);
