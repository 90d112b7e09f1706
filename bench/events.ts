/**
 * Deny events: refused connects per second from an isolated computer with
 * the agent's event reader running (events read, named, rate-limited) and
 * without it (the kernel still writes the ring buffer until it is full), and
 * the refused-path hook run time from the kernel's BPF statistics. Allowed
 * calls never reach the event code (see bench/connect.ts for their cost).
 *
 *   sudo node dist/bench/events.js [--rounds 5] [--iterations 50000]
 */

import { DenyEvents } from '../daemon/events.js';
import { Enforcer } from '../daemon/kernel/enforcer.js';
import { createWorld, type World } from '../test/helpers/world.js';
import { benchOptions, connectLoop, enableBpfStats, machine, progStats, writeResults } from './common.js';

const OPTIONS = benchOptions(
  'sudo node dist/bench/events.js',
  "Refused connects per second with and without the agent's deny-event reader.",
  {
    rounds: { type: 'number', default: 5, help: 'rounds of both variants, in alternating order' },
    iterations: { type: 'number', default: 50_000, help: 'refused connects per measurement' },
  },
);
const ROUNDS = OPTIONS.rounds;
const ITERATIONS = OPTIONS.iterations;

async function deniedLoop(world: World, cgroup: string): Promise<number> {
  const { stdout, result } = await connectLoop(world, cgroup, 'tcp', '192.0.2.1', ITERATIONS);
  if ((result.errors['EPERM'] ?? 0) !== ITERATIONS)
    throw new Error(`expected every connect refused: ${stdout}`);
  return result.ns_per_op;
}

async function main(): Promise<void> {
  const world = await createWorld();
  const restoreStats = enableBpfStats();
  const enforcer = Enforcer.open({ pinDir: world.pinDir, cgroupRoot: world.cgroupMount });
  try {
    const cg = world.makeCgroup('denied');
    enforcer.attach('denied', cg.relative, { mode: 'isolated', rules: [] }, 1n);
    const samples: Record<string, { ns: number[]; hook: number[] }> = {
      'without the event reader': { ns: [], hook: [] },
      'with the event reader': { ns: [], hook: [] },
    };
    let delivered = 0;
    for (let round = 0; round < ROUNDS; round++) {
      const order = round % 2 ? ['with the event reader', 'without the event reader'] : Object.keys(samples);
      for (const variant of order) {
        const reader =
          variant === 'with the event reader'
            ? new DenyEvents({ enforcer, ratePerSecond: 1e9, burst: 1e9, sink: () => delivered++ })
            : undefined;
        const before = progStats(world, 'connect4');
        const ns = await deniedLoop(world, cg.path);
        const after = progStats(world, 'connect4');
        reader?.poll();
        reader?.close();
        samples[variant]!.ns.push(ns);
        samples[variant]!.hook.push((after.ns - before.ns) / Math.max(1, after.runs - before.runs));
      }
    }
    const median = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)] ?? Number.NaN;
    const base = median(samples['without the event reader']!.ns);
    const rows = Object.entries(samples).map(([variant, s]) => ({
      variant,
      refused_connects_per_s: Math.round(1e9 / median(s.ns)),
      ns_per_refused_connect: Math.round(median(s.ns)),
      ratio: +(median(s.ns) / base).toFixed(3),
      hook_ns_median: Math.round(median(s.hook)),
    }));
    const host = machine();
    console.log(
      `refused connects, ${ROUNDS} rounds of ${ITERATIONS}; machine: ${host}; events delivered: ${delivered}`,
    );
    console.table(rows);
    writeResults('events', { machine: host, rows, delivered });
  } finally {
    restoreStats();
    enforcer.close();
    await world.destroy();
  }
}

await main();
