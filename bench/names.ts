/**
 * The cost of name-bound connections (bpf/lib/names.h), in one run, for a
 * connection to a learned address from a computer's cgroup:
 *   - on:   a hostname rule that binds names (the first bytes are judged);
 *   - off:  the same rule with bind_name false (no check, the other programs run);
 *   - none: a cgroup without egressd's programs (the baseline).
 * Connect + first send (a ClientHello of 1.5 kB) + its echo, p50 and p99, and
 * bulk throughput (--gib GiB after the ClientHello, over the world's
 * loopback), rounds interleaved; then the programs' own run time from BPF
 * statistics (kernel.bpf_stats_enabled).
 *
 *   sudo node dist/bench/names.js [--count 2000] [--gib 2] [--rounds 7]
 */
import { Enforcer } from '../daemon/kernel/enforcer.js';
import { NAME_CHECK } from '../daemon/kernel/loader.js';
import type { Rule } from '../policy/types.js';
import { clientHello } from '../test/helpers/client-hello.js';
import { createWorld, REPO_ROOT, type World } from '../test/helpers/world.js';
import {
  benchOptions,
  enableBpfStats,
  machine,
  pinnedProgStats,
  progStats,
  runBenchmark,
  writeResults,
} from './common.js';
import { percentile, round } from './egressd.js';

const OPTIONS = benchOptions(
  'sudo node dist/bench/names.js',
  'Connect + first send + echo, and bulk throughput, with the name check on, off (bind_name false) and no programs.',
  {
    count: { type: 'number', default: 2000, help: 'connections per latency measurement' },
    gib: { type: 'number', default: 2, help: 'GiB per bulk transfer' },
    rounds: { type: 'number', default: 7, help: 'rounds (modes interleaved in each)' },
  },
);
const TOOL = `${REPO_ROOT}build/name-bench`;
const ADDR = '203.0.113.50';
const ECHO = 7100;
const SINK = 7101;
const MODES = ['on', 'off', 'none'] as const;
type BenchMode = (typeof MODES)[number];

function rule(extra: Partial<Rule> = {}): Rule[] {
  return [
    { host: 'allowed.example', port: ECHO, protocol: 'tcp', ...extra },
    { host: 'allowed.example', port: SINK, protocol: 'tcp', ...extra },
  ];
}

async function tool(world: World, cgroup: string, ...args: string[]): Promise<Record<string, number>> {
  const { code, out } = await world.run(TOOL, args, { cgroup });
  if (code !== 0) throw new Error(`name-bench ${args[0]} exited ${code}: ${out}`);
  const result = JSON.parse(out) as Record<string, number>;
  if ('error' in result) throw new Error(`name-bench ${args[0]}: ${out}`);
  return result;
}

async function main(): Promise<void> {
  const world = await createWorld();
  const restoreStats = enableBpfStats();
  const enforcer = Enforcer.open({ pinDir: world.pinDir, cgroupRoot: world.cgroupMount, revocation: false });
  try {
    const server = world.spawn(TOOL, ['serve', String(ECHO), String(SINK)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    await new Promise((resolve) => server.stdout?.once('data', resolve));
    const cgroups: Record<BenchMode, string> = { on: 'bench-on', off: 'bench-off', none: 'bench-none' };
    for (const mode of MODES) {
      const cg = world.makeCgroup(cgroups[mode]);
      if (mode === 'none') continue;
      enforcer.attach(
        mode,
        cg.relative,
        { mode: 'allowlist', rules: rule(mode === 'off' ? { bind_name: false } : {}) },
        1n,
      );
      enforcer.learn(mode, ['allowed.example'], [[203, 0, 113, 50]], 3600);
    }
    const hello = clientHello({ names: ['allowed.example'], keyShareBytes: 1216 }).toString('hex');
    const latency: Record<BenchMode, { p50: number[]; p99: number[] }> = {
      on: { p50: [], p99: [] },
      off: { p50: [], p99: [] },
      none: { p50: [], p99: [] },
    };
    const gbps: Record<BenchMode, number[]> = { on: [], off: [], none: [] };
    const bytes = String(Math.round(OPTIONS.gib * 2 ** 30));
    const before = programStats(world);
    for (let round = 0; round < OPTIONS.rounds; round++) {
      for (const mode of MODES) {
        const l = await tool(
          world,
          cgroups[mode],
          'latency',
          ADDR,
          String(ECHO),
          String(OPTIONS.count),
          hello,
        );
        if (l['errors']) throw new Error(`${mode}: ${l['errors']} connections failed`);
        latency[mode].p50.push(l['p50_us'] ?? Number.NaN);
        latency[mode].p99.push(l['p99_us'] ?? Number.NaN);
        const b = await tool(world, cgroups[mode], 'bulk', ADDR, String(SINK), bytes, hello);
        gbps[mode].push(b['gbit_per_s'] ?? Number.NaN);
      }
    }
    const after = programStats(world);
    const perRun = (k: keyof typeof before) => {
      const runs = after[k].runs - before[k].runs;
      return { runs, ns: runs ? round((after[k].ns - before[k].ns) / runs, 0) : Number.NaN };
    };
    const median = (xs: number[]) => percentile(xs, 50);
    const table = MODES.map((mode) => ({
      mode,
      p50_us: round(median(latency[mode].p50), 1),
      p99_us: round(median(latency[mode].p99), 1),
      p50_vs_none: round(median(latency[mode].p50) / median(latency.none.p50), 3),
      gbit_per_s: round(median(gbps[mode]), 2),
      throughput_vs_none: round(median(gbps[mode]) / median(gbps.none), 3),
    }));
    const programs = { sk_msg: perRun('msg'), sock_ops: perRun('ops'), cgroup_skb_egress: perRun('skb') };
    console.log(`name-bound connections — ${machine()}`);
    console.table(table);
    console.log('programs (mean ns per run, over every run of the bench):');
    console.table(programs);
    writeResults('names', { machine: machine(), options: OPTIONS, table, programs });
    server.kill('SIGTERM');
  } finally {
    enforcer.close();
    restoreStats();
    await world.destroy();
  }
}

/** The name check's programs' statistics so far. */
function programStats(world: World) {
  return {
    msg: pinnedProgStats(world, NAME_CHECK.pin),
    ops: progStats(world, 'sock_ops'),
    skb: progStats(world, 'egress'),
  };
}

await runBenchmark(main);
