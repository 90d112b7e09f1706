/**
 * Apply latency against the real `egressd all` in a process of its own (the
 * load generator does not share its event loop), a real redis-server
 * (append-only file fsynced every second, Redis's usual production
 * setting) and computers that are cgroups of the test world:
 *
 *  1. PUT → 200 (enforced: the API answers 200 only once the agent has
 *     acknowledged the version) for allowlists of 10, 1,000 and 100,000 CIDR
 *     rules, p50/p99 from sending the request to the end of the answer,
 *     against PUT ?wait=0 (stored only, 202) of the same sizes in the same
 *     run, the two alternating in order. Every PUT is a real change (a new
 *     version). Between measurements the agent is let finish: a stored-only
 *     PUT is followed by an unmeasured wait for its enforcement, then
 *     /healthz must answer quickly again (retired entries are swept after an
 *     RCU grace period, which keeps the event loop busy at 100,000 rules).
 *     egressd is started with EGRESSD_MAX_RULES and EGRESSD_BODY_LIMIT raised
 *     so that a 100,000-rule policy (about 5 MB of JSON) is accepted.
 *
 *  2. PUT → first EPERM: a probe (bench/connect-loop.c) in the computer's
 *     cgroup, in the world namespace, sends UDP datagrams to 192.0.2.1:9 (a
 *     world address; port 9 has no listener, so the world's server does not
 *     report every datagram, and an unconnected UDP send still succeeds) while
 *     an allowlist allows it; once it runs, a PUT switches the computer to an
 *     allowlist without that destination. Reported: the time from the start
 *     of the PUT to the probe's first EPERM and to the 200, both on
 *     CLOCK_MONOTONIC. Enforced means enforced: an EPERM later than the 200
 *     is a violation, and so is (stricter, free of the probe's sampling
 *     interval) a datagram sent after the 200 arrived that still went
 *     through. Every violation is counted and printed.
 *
 *   sudo node dist/bench/apply.js [--reps 200,100,8] [--eperm-reps 50] [--eperm-rules 10]
 *                                 [--interval-us 20] [--no-rt]
 */
import type { ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { Rule } from '../policy/types.js';
import { type Egressd, startEgressd } from '../test/helpers/egressd.js';
import { startRedis, type TestRedis } from '../test/helpers/redis.js';
import { CONNECT_LOOP_PATH, createWorld, type World } from '../test/helpers/world.js';
import { benchOptions, machine, runBenchmark, writeResults } from './common.js';
import { BenchClient, percentile, round } from './egressd.js';

const SIZES = [10, 1_000, 100_000];
const OPTIONS = benchOptions(
  'sudo node dist/bench/apply.js',
  'Apply latency against egressd all: PUT → 200 by policy size, and PUT → first EPERM.',
  {
    reps: {
      type: 'numbers',
      default: [200, 100, 8],
      help: `PUTs of each kind for ${SIZES.join(', ')} rules`,
    },
    'eperm-reps': { type: 'number', default: 50, help: 'PUT → first EPERM measurements' },
    'eperm-rules': { type: 'number', default: 10, help: 'rules of the allowlists switched between' },
    'interval-us': { type: 'number', default: 20, help: "the probe's pause between datagrams, µs" },
    'no-rt': { type: 'flag', help: 'run the probe at normal priority instead of SCHED_FIFO 1' },
  },
);
const REPS = OPTIONS.reps;
if (REPS.length !== SIZES.length || REPS.some((n) => !Number.isInteger(n) || n < 1)) {
  throw new Error(`--reps takes ${SIZES.length} positive integers, e.g. 200,100,8`);
}
const EPERM_REPS = OPTIONS['eperm-reps'];
const EPERM_RULES = OPTIONS['eperm-rules'];
const INTERVAL_US = OPTIONS['interval-us'];
const RT = !OPTIONS['no-rt'];
const MAX_RULES = Math.max(...SIZES, EPERM_RULES);
const BODY_LIMIT = 64 * 1024 * 1024;
const NODE = 'bench-apply';
/** How long a PUT that waits for enforcement may wait (the API's largest ?wait=). */
const WAIT = 60_000;
/** The probe's destination: a world address, UDP, a port without listener. */
const TARGET = { host: '192.0.2.1', port: 9 };
const OTHER = { host: '192.0.2.2', port: 9 };

/** `n` distinct CIDR rules in 10.0.0.0/8 (nothing the world has); `variant` changes the first one's port. */
function fillerRules(n: number, variant: number): Rule[] {
  const rules: Rule[] = [];
  for (let i = 0; i < n; i++) {
    rules.push({
      host: `10.${(i >>> 16) & 255}.${(i >>> 8) & 255}.${i & 255}/32`,
      protocol: 'tcp',
      port: i === 0 ? 1 + (variant % 65535) : 443,
    });
  }
  return rules;
}

function policyBody(rules: Rule[]): string {
  return JSON.stringify({ mode: 'allowlist', rules });
}

function ms(ns: bigint): number {
  return Number(ns) / 1e6;
}

async function sleep(millis: number): Promise<void> {
  await new Promise((r) => setTimeout(r, millis));
}

async function withTimeout<T>(promise: Promise<T>, millis: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} within ${millis} ms`)), millis);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

interface Bench {
  world: World;
  egressd: Egressd;
  client: BenchClient;
}

async function register(b: Bench, id: string): Promise<string> {
  const cg = b.world.makeCgroup(id);
  await b.client.computers.put(id, { cgroup: cg.relative });
  return cg.path;
}

async function putEnforced(b: Bench, id: string, body: string) {
  const r = await b.client.putPolicy(id, body, WAIT);
  if (r.status !== 200) {
    throw new Error(`PUT (enforced) of ${id} answered ${r.status}: ${r.text.slice(0, 300)}`);
  }
  return r;
}

/**
 * Lets egressd finish what follows an answer (sweeping retired entries):
 * /healthz must answer within 5 ms (at most 50 tries).
 */
async function settle(b: Bench): Promise<void> {
  await sleep(20);
  for (let i = 0; i < 50; i++) {
    const r = await b.client.send('GET', '/healthz');
    if (ms(process.hrtime.bigint() - r.sentAt) < 5) return;
    await sleep(10);
  }
}

interface SizeRow {
  rules: number;
  reps: number;
  body_kib: number;
  enforced_p50_ms: number;
  enforced_p99_ms: number;
  stored_p50_ms: number;
  stored_p99_ms: number;
  ratio_p50: number;
  ratio_p99: number;
}

async function putLatency(b: Bench, size: number, reps: number): Promise<SizeRow> {
  const id = `apply-${size}`;
  await register(b, id);
  let variant = 0;
  const next = () => policyBody(fillerRules(size, variant++));
  // Attach, and one unmeasured round of each (JIT, connections).
  await putEnforced(b, id, next());
  const enforced: number[] = [];
  const stored: number[] = [];
  let bodyBytes = 0;
  const measure = async (kind: 'enforced' | 'stored', warm = false) => {
    const body = next();
    bodyBytes = Buffer.byteLength(body);
    if (kind === 'enforced') {
      const r = await putEnforced(b, id, body);
      if (!warm) enforced.push(ms(process.hrtime.bigint() - r.sentAt));
    } else {
      const r = await b.client.putPolicy(id, body, 0);
      const took = ms(process.hrtime.bigint() - r.sentAt);
      if (r.status !== 202 && r.status !== 200) throw new Error(`PUT ?wait=0 answered ${r.status}`);
      if (!warm) stored.push(took);
      // Not measured: the same policy again (unchanged) answers once the agent has enforced it.
      await putEnforced(b, id, body);
    }
    await settle(b);
  };
  await measure('stored', true);
  await measure('enforced', true);
  for (let i = 0; i < reps; i++) {
    // Alternate the order, so neither variant always runs on a warmer process.
    const order = i % 2 ? (['enforced', 'stored'] as const) : (['stored', 'enforced'] as const);
    for (const kind of order) await measure(kind);
  }
  const e50 = percentile(enforced, 50);
  const e99 = percentile(enforced, 99);
  const s50 = percentile(stored, 50);
  const s99 = percentile(stored, 99);
  return {
    rules: size,
    reps,
    body_kib: round(bodyBytes / 1024, 1),
    enforced_p50_ms: round(e50),
    enforced_p99_ms: round(e99),
    stored_p50_ms: round(s50),
    stored_p99_ms: round(s99),
    ratio_p50: round(e50 / s50),
    ratio_p99: round(e99 / s99),
  };
}

interface LoopResult {
  iterations: number;
  completed: number;
  errors: Record<string, number>;
  timed_out: boolean;
  errno_at_ns: number | null;
  last_ok_ns: number | null;
}

interface Probe {
  child: ChildProcess;
  ready: Promise<void>;
  result: Promise<LoopResult>;
}

/** connect-loop in the computer's cgroup and the world namespace, until its first EPERM (at most 15 s). */
function startProbe(world: World, cgroupPath: string): Probe {
  // Real-time priority (SCHED_FIFO 1, only when it sleeps between sends): it runs as soon as its sleep
  // ends, rather than when the busy cores next let it, so that its samples are as close as asked.
  const rt = RT && INTERVAL_US > 0 ? ['chrt', '-f', '1', CONNECT_LOOP_PATH] : [CONNECT_LOOP_PATH];
  const child = world.spawn(
    rt[0]!,
    [
      ...rt.slice(1),
      '--cgroup',
      cgroupPath,
      '--netns',
      world.netnsPath,
      '--until-errno',
      'EPERM',
      '--ready',
      '--interval-us',
      String(INTERVAL_US),
      '--max-seconds',
      '15',
      'udp',
      TARGET.host,
      String(TARGET.port),
      '1000000000',
    ],
    { netns: false, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  let last: LoopResult | undefined;
  let onReady = () => {};
  const ready = new Promise<void>((resolve, reject) => {
    onReady = resolve;
    child.once('close', () => reject(new Error(`connect-loop ended before it was ready: ${stderr.trim()}`)));
  });
  const result = new Promise<LoopResult>((resolve, reject) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0 && last) resolve(last);
      else reject(new Error(`connect-loop exited with ${code ?? signal}: ${stderr.trim()}`));
    });
  });
  ready.catch(() => {});
  result.catch(() => {});
  createInterface({ input: child.stdout! }).on('line', (line) => {
    if (line === 'ready') onReady();
    else if (line.startsWith('{')) last = JSON.parse(line) as LoopResult;
  });
  return { child, ready, result };
}

interface EpermSample {
  rep: number;
  putToEpermMs: number;
  putTo200Ms: number;
  /** The probe's sampling gap around the switch: last datagram through → EPERM. */
  resolutionUs: number;
  epermAfter200: boolean;
  okAfter200: boolean;
  epermBeforePut: boolean;
  /** How long before the 200 arrived the last datagram that went through was sent, ms. */
  lastOkBefore200Ms: number;
}

async function putToEperm(b: Bench) {
  const id = 'apply-eperm';
  const cgroupPath = await register(b, id);
  const allowed = policyBody([{ ...TARGET, protocol: 'udp' }, ...fillerRules(EPERM_RULES - 1, 0)]);
  const denied = policyBody([{ ...OTHER, protocol: 'udp' }, ...fillerRules(EPERM_RULES - 1, 0)]);
  const samples: EpermSample[] = [];
  const noEperm: string[] = [];
  for (let rep = -1; rep < EPERM_REPS; rep++) {
    await putEnforced(b, id, allowed);
    await settle(b);
    const probe = startProbe(b.world, cgroupPath);
    await withTimeout(probe.ready, 5000, 'connect-loop was not ready').catch((err) => {
      probe.child.kill('SIGKILL');
      throw err;
    });
    const r = await putEnforced(b, id, denied);
    const loop = await probe.result;
    if (rep < 0) continue; // warm-up
    const t0 = r.sentAt;
    const t200 = r.headersAt;
    if (loop.errno_at_ns === null) {
      noEperm.push(`rep ${rep}: no EPERM within 15 s of the PUT (200 after ${round(ms(t200 - t0))} ms)`);
      continue;
    }
    const eperm = BigInt(loop.errno_at_ns);
    const lastOk = loop.last_ok_ns === null ? undefined : BigInt(loop.last_ok_ns);
    samples.push({
      rep,
      putToEpermMs: ms(eperm - t0),
      putTo200Ms: ms(t200 - t0),
      resolutionUs: lastOk === undefined ? Number.NaN : Number(eperm - lastOk) / 1000,
      epermAfter200: eperm > t200,
      okAfter200: lastOk !== undefined && lastOk > t200,
      epermBeforePut: eperm < t0,
      lastOkBefore200Ms: lastOk === undefined ? Number.NaN : ms(t200 - lastOk),
    });
  }
  const eperm = samples.map((s) => s.putToEpermMs);
  const put200 = samples.map((s) => s.putTo200Ms);
  const lead = samples.map((s) => s.putTo200Ms - s.putToEpermMs);
  const resolution = samples.map((s) => s.resolutionUs).filter((x) => !Number.isNaN(x));
  const violations = samples.filter((s) => s.okAfter200);
  const unsampled = samples.filter((s) => s.epermAfter200 && !s.okAfter200);
  const early = samples.filter((s) => s.epermBeforePut);
  const dist = (what: string, values: number[], digits: number) => ({
    measure: what,
    p50: round(percentile(values, 50), digits),
    p99: round(percentile(values, 99), digits),
    min: round(Math.min(...values), digits),
    max: round(Math.max(...values), digits),
  });
  const timings = [
    dist('PUT start → first EPERM, ms', eperm, 3),
    dist('PUT start → 200, ms', put200, 3),
    dist('first EPERM earlier than the 200 by, ms', lead, 3),
    dist('probe gap: last datagram through → EPERM, µs', resolution, 1),
  ];
  const counts = {
    reps: samples.length + noEperm.length,
    rules: EPERM_RULES,
    eperm_to_200_ratio_p50: round(percentile(eperm, 50) / percentile(put200, 50), 2),
    eperm_after_200: samples.filter((s) => s.epermAfter200).length,
    sent_ok_after_200: samples.filter((s) => s.okAfter200).length,
    no_eperm: noEperm.length,
    eperm_before_put: early.length,
  };
  const at = (s: EpermSample) =>
    `first EPERM ${round(s.putToEpermMs, 3)} ms after the PUT started, 200 after ${round(s.putTo200Ms, 3)} ms`;
  const details = [
    ...violations.map(
      (s) =>
        `rep ${s.rep}: a datagram sent ${round(-s.lastOkBefore200Ms, 3)} ms after the 200 arrived still went through; ${at(s)}`,
    ),
    ...noEperm,
    ...early.map((s) => `rep ${s.rep}: EPERM ${round(-s.putToEpermMs, 3)} ms before the PUT was sent`),
  ];
  const notes = unsampled.map(
    (s) =>
      `rep ${s.rep}: ${at(s)}, but the probe sent nothing between ${round(s.lastOkBefore200Ms, 3)} ms before the 200 (that datagram went through) and its EPERM (gap ${round(s.resolutionUs, 1)} µs: it was not running)`,
  );
  return { timings, counts, details, notes, samples };
}

async function main(): Promise<void> {
  let world: World | undefined;
  let redis: TestRedis | undefined;
  let egressd: Egressd | undefined;
  let client: BenchClient | undefined;
  try {
    world = await createWorld();
    redis = await startRedis({ appendfsync: 'everysec' });
    egressd = await startEgressd({
      world,
      redisUrl: redis.url,
      node: NODE,
      env: { EGRESSD_MAX_RULES: String(MAX_RULES), EGRESSD_BODY_LIMIT: String(BODY_LIMIT) },
    });
    client = new BenchClient(egressd, 4);
    const b: Bench = { world, egressd, client };

    const sizes: SizeRow[] = [];
    for (const [i, size] of SIZES.entries()) sizes.push(await putLatency(b, size, REPS[i]!));
    const eperm = await putToEperm(b);

    const host = machine();
    const limits = `EGRESSD_MAX_RULES=${MAX_RULES} and EGRESSD_BODY_LIMIT=${BODY_LIMIT} (defaults 10000 and 1048576), so that ${MAX_RULES.toLocaleString('en')}-rule policies are accepted`;
    console.log(`apply benchmarks; machine: ${host}`);
    console.log(`egressd all in its own process, started with ${limits}; redis-server appendfsync everysec`);
    console.log(
      'PUT of an allowlist, ms from sending to the end of the answer: enforced (200, the agent acknowledged) vs stored only (?wait=0, 202); ratio = enforced / stored',
    );
    console.table(sizes);
    console.log(
      `PUT → first EPERM: a probe sends UDP to ${TARGET.host}:${TARGET.port} every ~${INTERVAL_US} µs from the computer's cgroup; the PUT switches its ${EPERM_RULES}-rule allowlist to one without that destination (times from the start of the PUT, CLOCK_MONOTONIC)`,
    );
    console.table(eperm.timings);
    console.table([eperm.counts]);
    if (eperm.details.length) {
      console.log(`VIOLATIONS (enforced must mean enforced): ${eperm.details.length}`);
      for (const d of eperm.details) console.log(`  ${d}`);
    } else {
      console.log(
        'no violations: no datagram sent after the 200 went through, and every PUT brought an EPERM',
      );
    }
    if (eperm.notes.length) {
      console.log(
        `first EPERM after the 200 without a datagram through after it (the probe was not scheduled in time; not a violation): ${eperm.notes.length}`,
      );
      for (const n of eperm.notes) console.log(`  ${n}`);
    }
    writeResults('apply', {
      machine: host,
      egressd: { max_rules: MAX_RULES, body_limit: BODY_LIMIT, redis_appendfsync: 'everysec' },
      put_latency: sizes,
      put_to_eperm: {
        ...eperm.counts,
        probe_interval_us: INTERVAL_US,
        timings: eperm.timings,
        probe_priority: RT && INTERVAL_US > 0 ? 'SCHED_FIFO 1' : 'normal',
        violations: eperm.details,
        eperm_after_200_not_sampled: eperm.notes,
      },
      put_to_eperm_samples: eperm.samples.map((s) => ({
        put_to_eperm_ms: round(s.putToEpermMs, 3),
        put_to_200_ms: round(s.putTo200Ms, 3),
        probe_gap_us: round(s.resolutionUs, 1),
      })),
    });
  } finally {
    client?.close();
    await egressd?.stop();
    await redis?.cleanup();
    await world?.destroy();
  }
}

await runBenchmark(main);
