/**
 * connect() and sendto() cost under egressd, against no program at all,
 * measured by a C loop (bench/connect-loop.c) in the test world: TCP
 * connect+close to 192.0.2.1:80 and unconnected UDP sendto, each inside
 * the world namespace. Variants: no program; allowlists of 10, 1,000 and
 * 100,000 CIDR rules (the destination allowed, so every hook runs its full
 * path). Each round runs every variant once, in rotated order; figures are
 * min and median over rounds, as ratios to the no-program baseline of the
 * same run, plus the mean run time of the hook itself from the kernel's BPF
 * statistics (robust to the noise of a shared machine). Also: the time to
 * apply 10,000- and 100,000-rule policies.
 *
 *   sudo node dist/bench/connect.js [--rounds N] [--tcp-iterations N] [--udp-iterations N]
 */

import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { Enforcer } from '../daemon/src/enforcer.js';
import type { Policy, Rule } from '../daemon/src/policy/types.js';
import { CONNECT_LOOP_PATH, createWorld, type World } from '../test/helpers/world.js';
import { arg, machine, progStats, writeResults } from './common.js';

const execFileAsync = promisify(execFile);

const ROUNDS = arg('rounds', 7);
const TCP_ITERATIONS = arg('tcp-iterations', 20_000);
const UDP_ITERATIONS = arg('udp-iterations', 200_000);
const SIZES = [10, 1_000, 100_000];

/** `n` distinct CIDR rules spread over 10.0.0.0/8 and 2001:db8:100::/40, plus the benchmark's destination. */
function allowlist(n: number): Policy {
  const rules: Rule[] = [{ host: '192.0.2.1', protocol: 'any' }];
  for (let i = 0; rules.length < n; i++) {
    const x = (i * 2654435761) >>> 0; // spread over the space (Knuth's multiplicative hash)
    if (i % 4 === 3) {
      rules.push({
        host: `2001:db8:1${(x >>> 24).toString(16).padStart(2, '0')}:${(x & 0xffff).toString(16)}::/64`,
        protocol: 'any',
      });
    } else {
      const len = 24 + (i % 9);
      rules.push({
        host: `10.${(x >>> 16) & 255}.${(x >>> 8) & 255}.${x & 255}/${len}`,
        protocol: 'tcp',
        port: 443,
      });
    }
  }
  return { mode: 'allowlist', rules };
}

interface Sample {
  variant: string;
  mode: 'tcp' | 'udp';
  nsPerOp: number;
  /** Mean run time of the hook itself (kernel.bpf_stats_enabled), ns; NaN without a program. */
  hookNs: number;
}

async function loop(world: World, cgroup: string, mode: 'tcp' | 'udp', iterations: number): Promise<number> {
  const { stdout } = await execFileAsync(CONNECT_LOOP_PATH, [
    '--cgroup',
    cgroup,
    '--netns',
    world.netnsPath,
    mode,
    '192.0.2.1',
    '80',
    String(iterations),
  ]);
  const result = JSON.parse(stdout) as {
    ns_per_op: number;
    completed: number;
    errors: Record<string, number>;
  };
  if (result.completed !== iterations) {
    throw new Error(
      `${mode} loop in ${cgroup}: only ${result.completed} of ${iterations} completed: ${stdout}`,
    );
  }
  return result.ns_per_op;
}

function stats(values: number[]): { min: number; median: number } {
  const sorted = [...values].sort((a, b) => a - b);
  return { min: sorted[0] ?? Number.NaN, median: sorted[Math.floor(sorted.length / 2)] ?? Number.NaN };
}

function timeApply(enforcer: Enforcer, id: string, policy: Policy, times: number): number[] {
  const ms: number[] = [];
  for (let i = 0; i < times; i++) {
    const start = process.hrtime.bigint();
    enforcer.apply(id, policy, BigInt(i + 10));
    ms.push(Number(process.hrtime.bigint() - start) / 1e6);
  }
  return ms;
}

async function main(): Promise<void> {
  const world = await createWorld();
  const statsWas = readFileSync('/proc/sys/kernel/bpf_stats_enabled', 'utf8').trim();
  writeFileSync('/proc/sys/kernel/bpf_stats_enabled', '1');
  const enforcer = Enforcer.open({ pinDir: world.pinDir, cgroupRoot: world.cgroupMount });
  try {
    const variants: { name: string; cgroup: string }[] = [
      { name: 'no program', cgroup: world.makeCgroup('none').path },
    ];
    for (const n of SIZES) {
      const cg = world.makeCgroup(`allow-${n}`);
      enforcer.attach(`allow-${n}`, cg.relative, allowlist(n), 1n);
      variants.push({ name: `allowlist ${n.toLocaleString('en')} rules`, cgroup: cg.path });
    }
    await enforcer.sweep();

    const samples: Sample[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const order = variants.map((_, i) => variants[(i + round) % variants.length]!);
      for (const v of order) {
        for (const [mode, iterations, program] of [
          ['tcp', TCP_ITERATIONS, 'egress_connect4'],
          ['udp', UDP_ITERATIONS, 'egress_sendmsg4'],
        ] as const) {
          const before = progStats(world, program);
          const nsPerOp = await loop(world, v.cgroup, mode, iterations);
          const after = progStats(world, program);
          const runs = after.runs - before.runs;
          samples.push({
            variant: v.name,
            mode,
            nsPerOp,
            hookNs: runs > 0 ? (after.ns - before.ns) / runs : Number.NaN,
          });
        }
      }
    }

    const rows = [];
    for (const mode of ['tcp', 'udp'] as const) {
      const base = stats(
        samples.filter((s) => s.mode === mode && s.variant === 'no program').map((s) => s.nsPerOp),
      );
      for (const v of variants) {
        const s = stats(samples.filter((x) => x.mode === mode && x.variant === v.name).map((x) => x.nsPerOp));
        const hook = stats(
          samples.filter((x) => x.mode === mode && x.variant === v.name).map((x) => x.hookNs),
        );
        rows.push({
          op: mode === 'tcp' ? 'tcp connect+close' : 'udp sendto',
          variant: v.name,
          min_ns: Math.round(s.min),
          median_ns: Math.round(s.median),
          ratio_min: +(s.min / base.min).toFixed(3),
          ratio_median: +(s.median / base.median).toFixed(3),
          hook_ns_median: Number.isNaN(hook.median) ? '-' : Math.round(hook.median),
        });
      }
    }

    const applyCg = world.makeCgroup('apply');
    enforcer.attach('apply', applyCg.relative, { mode: 'isolated', rules: [] }, 1n);
    const applies = [];
    for (const n of [10_000, 100_000]) {
      const policy = allowlist(n);
      const ms = timeApply(enforcer, 'apply', policy, n === 10_000 ? 20 : 5);
      await enforcer.sweep();
      const s = stats(ms);
      applies.push({
        rules: n,
        min_ms: +s.min.toFixed(1),
        median_ms: +s.median.toFixed(1),
        max_ms: +Math.max(...ms).toFixed(1),
      });
    }

    const host = machine();
    console.log(`connect() cost, ${ROUNDS} rounds, rotated order; machine: ${host}`);
    console.table(rows);
    console.log('policy apply (compile + map writes + switch), ms');
    console.table(applies);
    writeResults('connect', {
      machine: host,
      rounds: ROUNDS,
      tcpIterations: TCP_ITERATIONS,
      udpIterations: UDP_ITERATIONS,
      rows,
      applies,
    });
  } finally {
    writeFileSync('/proc/sys/kernel/bpf_stats_enabled', statsWas);
    enforcer.close();
    await world.destroy();
  }
}

await main();
