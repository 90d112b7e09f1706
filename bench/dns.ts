/**
 * DNS proxy cost: Debian's dnsperf and resperf asking dnsmasq directly,
 * against the same queries from governed computers (allowlist of
 * *.bench.test, so every answer is learned into the kernel map before it is
 * released) whose DNS the hooks redirect to the proxy: one with `dns: all`
 * (every name forwarded), one with `dns: listed` (the default: only names
 * the rules cover are forwarded). Then names no rule covers
 * (n<i>.unlisted.test): answered NXDOMAIN by dnsmasq itself when asked
 * directly (`local=/unlisted.test/`), and by the proxy itself, never
 * forwarded, for the `dns: listed` computer. Everything on loopback in the
 * host namespace. Each round runs every measurement for every variant, the
 * variants' order rotated between rounds. The proxy runs in this process:
 * one core. resperf busy-waits on a core while it sends, so on a 2-core
 * machine the proxy and dnsmasq share the other.
 *
 * Figures, per variant (first table):
 * - queries_timed, p50_ms, p99_ms: dnsperf -v at a fixed 2000 queries/s for
 *   --seconds: every query's latency, pooled over the rounds.
 * - qps_max, qps_median: dnsperf -q 500 for --seconds, self-paced (500
 *   queries kept in flight, a new one sent per answer): its "Queries per
 *   second", best and median round.
 * - resperf_max_qps, resperf_median_qps: resperf ramps its send rate
 *   linearly from 0 to --resperf-max-qps over --resperf-ramp seconds and
 *   counts each answer in the plot interval (0.1 s) its query was sent in;
 *   its "Maximum throughput" is the highest answer rate of any interval.
 *   Best and median round.
 * - lost_at_max_pct: resperf's "Lost at that point": the share of the
 *   queries sent in that interval that got no answer within 1 s (median).
 * - loss_onset_qps: the send rate of the first interval from which at least
 *   1 % of the queries sent went unanswered within 1 s or were answered
 *   SERVFAIL, for 0.5 s in a row (or to the end of the ramp): where the
 *   variant starts to drop.
 *   Median of the rounds that lost; null when none did (it kept up with
 *   the whole ramp).
 * - ramp_end: why resperf stopped sending, per round: "max" (reached
 *   --resperf-max-qps: the variant is faster than the ramp, its figures are
 *   lower bounds), "outstanding" (5000 queries unanswered: overloaded, the
 *   usual end) or "fell behind" (resperf itself could not keep its
 *   schedule: the sender, not the variant, was the limit; a lower bound
 *   again).
 * - rcodes: the answers' RCODEs counted in the latency runs (NXDOMAIN is
 *   the expected answer of the unlisted variants, NOERROR of the others).
 * Second table, one row per comparison (a proxied variant against its
 * baseline of the same run): the added p50/p99 latency (ms); the ratios of
 * qps_max (dnsperf), resperf_max_qps and loss_onset_qps. Then the proxy's
 * learned-map address writes, fail-closed SERVFAILs and unlisted names
 * over the whole run. The JSON has every round's figures.
 *
 *   sudo node dist/bench/dns.js [--rounds 3] [--seconds 5] [--resperf 1]
 *                               [--resperf-max-qps 60000] [--resperf-ramp 20]
 * --resperf 0 skips the resperf ramps (a shorter run: latency and dnsperf only).
 */

import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { DnsProxy } from '../daemon/dns/proxy.js';
import { Enforcer } from '../daemon/kernel/enforcer.js';
import { startDnsmasq } from '../test/helpers/dnsmasq.js';
import { createWorld, type World } from '../test/helpers/world.js';
import { benchOptions, machine, writeResults } from './common.js';

const OPTIONS = benchOptions(
  'sudo node dist/bench/dns.js',
  "The DNS proxy's cost: dnsperf and resperf against dnsmasq directly and through the proxy.",
  {
    rounds: { type: 'number', default: 3, help: 'rounds of every variant, in rotated order' },
    seconds: { type: 'number', default: 5, help: 'length of each dnsperf run' },
    resperf: { type: 'number', default: 1, help: '0 skips the resperf ramps' },
    'resperf-max-qps': { type: 'number', default: 60000, help: "the end of resperf's ramp, queries/s" },
    'resperf-ramp': { type: 'number', default: 20, help: "the length of resperf's ramp, seconds" },
  },
);
const ROUNDS = OPTIONS.rounds;
const SECONDS = OPTIONS.seconds;
/** resperf's ramp: 0 to this many queries per second... */
const RESPERF_MAX_QPS = OPTIONS['resperf-max-qps'];
/** ...over this many seconds (3000 q/s more each second by default, 300 per plot interval). */
const RESPERF_RAMP = OPTIONS['resperf-ramp'];
/** 0: no resperf ramps. */
const RESPERF = OPTIONS.resperf;
/** resperf stops ramping at this many unanswered queries: well past the point of overload. */
const RESPERF_OUTSTANDING = 5000;
/** Seconds after which resperf counts a query as lost. */
const RESPERF_TIMEOUT = 1;
const PLOT_INTERVAL = 0.1;
/** Share of an interval's queries unanswered (or SERVFAIL) that counts as losing... */
const ONSET_LOSS = 0.01;
/** ...for this many intervals in a row (0.5 s: a pause of the busy machine's scheduler is not the limit). */
const ONSET_INTERVALS = 5;
const NAMES = 1000;
const PORTS: [number, number] = [43000, 43999];

async function tool(
  world: World,
  command: 'dnsperf' | 'resperf',
  cgroup: string,
  server: string,
  port: number,
  args: string[],
): Promise<string> {
  return (await world.run(command, ['-s', server, '-p', String(port), ...args], { cgroup, netns: false }))
    .out;
}

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))] ?? Number.NaN;
}

interface Resperf {
  maxQps: number;
  lostAtMaxPct: number;
  /** Send rate where losing began; undefined when it never did. */
  onsetQps: number | undefined;
  /** Highest send rate reached. */
  sentQps: number;
  end: 'max' | 'outstanding' | 'fell behind';
}

/** One resperf ramp: its summary, and from its plot file where answers began to go missing. */
async function resperf(
  world: World,
  cgroup: string,
  server: string,
  port: number,
  queries: string,
  plot: string,
): Promise<Resperf> {
  rmSync(plot, { force: true });
  const out = await tool(world, 'resperf', cgroup, server, port, [
    '-d',
    queries,
    '-R',
    '-m',
    String(RESPERF_MAX_QPS),
    '-r',
    String(RESPERF_RAMP),
    '-t',
    String(RESPERF_TIMEOUT),
    '-q',
    String(RESPERF_OUTSTANDING),
    '-i',
    String(PLOT_INTERVAL),
    '-P',
    plot,
  ]);
  const max = /Maximum throughput:\s+([0-9.]+) qps/.exec(out);
  const lost = /Lost at that point:\s+([0-9.]+)%/.exec(out);
  if (!max || !lost) throw new Error(`resperf gave no figures: ${out.slice(-400)}`);
  // time target_qps actual_qps responses_per_sec failures_per_sec avg_latency ...
  const rows = readFileSync(plot, 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '' && !l.startsWith('#'))
    .map((l) => l.trim().split(/\s+/).map(Number))
    .map(([, , sent = 0, answered = 0, failed = 0]) => ({
      sent,
      losing: sent - answered + failed > sent * ONSET_LOSS,
    }))
    .filter((r) => r.sent > 0);
  const onset = rows.findIndex((_, i) => rows.slice(i, i + ONSET_INTERVALS).every((r) => r.losing));
  return {
    maxQps: Number(max[1]),
    lostAtMaxPct: Number(lost[1]),
    onsetQps: onset >= 0 ? rows[onset]?.sent : undefined,
    sentQps: Math.max(0, ...rows.map((r) => r.sent)),
    end: out.includes('Fell behind')
      ? 'fell behind'
      : out.includes('outstanding queries')
        ? 'outstanding'
        : 'max',
  };
}

interface Variant {
  name: string;
  cgroup: string;
  server: string;
  port: number;
  queries: string;
}

async function main(): Promise<void> {
  const world = await createWorld();
  const dnsmasq = await startDnsmasq([
    ...Array.from({ length: NAMES }, (_, i) => `host-record=n${i}.bench.test,203.0.113.${i % 250},300`),
    // Names under unlisted.test: NXDOMAIN from dnsmasq itself (it has no upstream to ask).
    'local=/unlisted.test/',
  ]);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'egressd-dnsperf-'));
  const listedQueries = path.join(dir, 'listed.txt');
  const unlistedQueries = path.join(dir, 'unlisted.txt');
  const plot = path.join(dir, 'resperf.plot');
  writeFileSync(listedQueries, Array.from({ length: NAMES }, (_, i) => `n${i}.bench.test A`).join('\n'));
  writeFileSync(unlistedQueries, Array.from({ length: NAMES }, (_, i) => `n${i}.unlisted.test A`).join('\n'));
  const enforcer = Enforcer.open({ pinDir: world.pinDir, cgroupRoot: world.cgroupMount });
  enforcer.setDnsConfig(PORTS);
  const proxy = new DnsProxy({
    enforcer,
    upstreams: [{ host: dnsmasq.host, port: dnsmasq.port }],
    listen: ['127.0.0.1', '::1'],
    portRange: PORTS,
    ttlFloor: 5,
    ttlCeiling: 3600,
    timeoutMs: 3000,
    log: pino({ level: 'silent' }),
  });
  try {
    const plain = world.makeCgroup('direct');
    const governed = async (id: string, dns: 'all' | 'listed') => {
      const cg = world.makeCgroup(id);
      const port = await proxy.ensure(id);
      enforcer.attach(
        id,
        cg.relative,
        { mode: 'allowlist', rules: [{ host: '*.bench.test', protocol: 'tcp' }], dns },
        1n,
        { port },
      );
      return cg.path;
    };
    const all = await governed('governed-all', 'all');
    const listed = await governed('governed-listed', 'listed');
    const direct = { cgroup: plain.path, server: dnsmasq.host, port: dnsmasq.port };
    const proxied = { server: '127.0.0.53', port: 53 };
    const variants: Variant[] = [
      { name: 'direct to dnsmasq', ...direct, queries: listedQueries },
      { name: 'proxy, dns all', cgroup: all, ...proxied, queries: listedQueries },
      { name: 'proxy, dns listed', cgroup: listed, ...proxied, queries: listedQueries },
      { name: 'direct, NXDOMAIN', ...direct, queries: unlistedQueries },
      { name: 'proxy, listed: unlisted name', cgroup: listed, ...proxied, queries: unlistedQueries },
    ];
    const results = new Map<
      string,
      {
        lat: number[];
        rcodes: Record<string, number>;
        qps: number[];
        ramps: Resperf[];
        rounds: Record<string, unknown>[];
      }
    >(variants.map((v) => [v.name, { lat: [], rcodes: {}, qps: [], ramps: [], rounds: [] }]));
    for (let round = 0; round < ROUNDS; round++) {
      // Rotated, so that no variant always runs first (or right after another).
      const order = variants.map((_, i) => variants[(i + round) % variants.length]!);
      for (const v of order) {
        const r = results.get(v.name)!;
        const verbose = await tool(world, 'dnsperf', v.cgroup, v.server, v.port, [
          '-d',
          v.queries,
          '-l',
          String(SECONDS),
          '-Q',
          '2000',
          '-v',
        ]);
        const lat: number[] = [];
        for (const m of verbose.matchAll(/^> ([A-Z]+) \S+ A ([0-9.]+)$/gm)) {
          r.rcodes[m[1]!] = (r.rcodes[m[1]!] ?? 0) + 1;
          lat.push(Number(m[2]) * 1000);
        }
        r.lat.push(...lat);
        const load = await tool(world, 'dnsperf', v.cgroup, v.server, v.port, [
          '-d',
          v.queries,
          '-l',
          String(SECONDS),
          '-q',
          '500',
        ]);
        const qps = /Queries per second:\s+([0-9.]+)/.exec(load);
        if (!qps) throw new Error(`dnsperf gave no figures for ${v.name}: ${load.slice(-400)}`);
        r.qps.push(Number(qps[1]));
        const ramp = RESPERF ? await resperf(world, v.cgroup, v.server, v.port, v.queries, plot) : undefined;
        if (ramp) r.ramps.push(ramp);
        r.rounds.push({
          round,
          p50_ms: +percentile(lat, 50).toFixed(3),
          p99_ms: +percentile(lat, 99).toFixed(3),
          dnsperf_qps: Math.round(Number(qps[1])),
          ...(ramp ? { resperf: ramp } : {}),
        });
      }
    }
    const rows = variants.map((v) => {
      const r = results.get(v.name)!;
      const onsets = r.ramps.flatMap((x) => (x.onsetQps === undefined ? [] : [x.onsetQps]));
      const maxes = r.ramps.map((x) => x.maxQps);
      return {
        variant: v.name,
        queries_timed: r.lat.length,
        rcodes: Object.entries(r.rcodes)
          .map(([k, n]) => `${k} ${n}`)
          .join(', '),
        p50_ms: +percentile(r.lat, 50).toFixed(3),
        p99_ms: +percentile(r.lat, 99).toFixed(3),
        qps_max: Math.round(Math.max(...r.qps)),
        qps_median: Math.round(percentile(r.qps, 50)),
        resperf_max_qps: maxes.length > 0 ? Math.round(Math.max(...maxes)) : null,
        resperf_median_qps: maxes.length > 0 ? Math.round(percentile(maxes, 50)) : null,
        lost_at_max_pct:
          r.ramps.length > 0
            ? +percentile(
                r.ramps.map((x) => x.lostAtMaxPct),
                50,
              ).toFixed(2)
            : null,
        loss_onset_qps: onsets.length > 0 ? Math.round(percentile(onsets, 50)) : null,
        ramp_end: r.ramps.map((x) => x.end).join(', '),
      };
    });
    const row = (name: string) => rows.find((r) => r.variant === name)!;
    const ratio = (a: number | null, b: number | null) =>
      a !== null && b !== null ? +(a / b).toFixed(2) : null;
    const compare = (name: string, baseline: string) => {
      const p = row(name);
      const d = row(baseline);
      return {
        comparison: `${name} − ${baseline}`,
        added_p50_ms: +(p.p50_ms - d.p50_ms).toFixed(3),
        added_p99_ms: +(p.p99_ms - d.p99_ms).toFixed(3),
        qps_ratio: ratio(p.qps_max, d.qps_max),
        resperf_ratio: ratio(p.resperf_max_qps, d.resperf_max_qps),
        onset_ratio: ratio(p.loss_onset_qps, d.loss_onset_qps),
      };
    };
    const added = [
      compare('proxy, dns all', 'direct to dnsmasq'),
      compare('proxy, dns listed', 'direct to dnsmasq'),
      compare('proxy, dns listed', 'proxy, dns all'),
      compare('proxy, listed: unlisted name', 'direct, NXDOMAIN'),
      compare('proxy, listed: unlisted name', 'direct to dnsmasq'),
    ];
    const totals = {
      learned_writes: proxy.stats.learned,
      fail_closed: proxy.stats.failClosed,
      unlisted: proxy.stats.unlisted,
    };
    const host = machine();
    console.log(
      `DNS proxy vs direct, ${ROUNDS} rounds of ${SECONDS} s dnsperf${RESPERF ? ` and a resperf ramp to ${RESPERF_MAX_QPS} q/s over ${RESPERF_RAMP} s` : ''}; machine: ${host}`,
    );
    console.table(rows);
    console.table(added);
    console.table([totals]);
    writeResults('dns', {
      machine: host,
      options: {
        rounds: ROUNDS,
        seconds: SECONDS,
        resperf: RESPERF !== 0,
        resperf_max_qps: RESPERF_MAX_QPS,
        resperf_ramp_s: RESPERF_RAMP,
        resperf_timeout_s: RESPERF_TIMEOUT,
        resperf_max_outstanding: RESPERF_OUTSTANDING,
        resperf_plot_interval_s: PLOT_INTERVAL,
        onset_loss_pct: ONSET_LOSS * 100,
        onset_intervals: ONSET_INTERVALS,
      },
      rows,
      added,
      totals,
      rounds: Object.fromEntries(variants.map((v) => [v.name, results.get(v.name)!.rounds])),
    });
  } finally {
    await proxy.close();
    enforcer.close();
    await dnsmasq.stop();
    await world.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
