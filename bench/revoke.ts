/**
 * The cost of live revocation on a PUT, against the real `egressd all` and
 * the test world: PUT → 200 (enforced, revocation pass done) while the
 * computer holds 0, 100 and 10,000 open TCP connections and another
 * computer holds 10,000 more, with revocation on and then, in the same run,
 * with egressd started again with --revocation off (the baseline). Each PUT
 * switches between two allowlists that both allow the held connections, so
 * the pass walks every socket and closes none: the cost of looking. Then
 * the cost of closing: one PUT to isolated that closes the computer's
 * 10,000 connections.
 *
 *   sudo node dist/bench/revoke.js [--reps 50] [--others 10000] [--sizes 0,100,10000]
 */
import { type Egressd, startEgressd } from '../test/helpers/egressd.js';
import { ECHO_PORT, echoServer, holdMany } from '../test/helpers/held-sockets.js';
import { createWorld, type World } from '../test/helpers/world.js';
import { benchOptions, machine, runBenchmark, writeResults } from './common.js';
import { BenchClient, percentile, round } from './egressd.js';

const OPTIONS = benchOptions(
  'sudo node dist/bench/revoke.js',
  'PUT → 200 with open connections, live revocation on against off; the time to close 10,000.',
  {
    reps: { type: 'number', default: 50, help: 'PUTs per measurement' },
    sizes: { type: 'numbers', default: [0, 100, 10_000], help: 'connections open in the computer' },
    others: { type: 'number', default: 10_000, help: 'connections open in another computer' },
  },
);
const NODE = 'bench-revoke';
const WAIT = 60_000;
/** The other computer's connections go to an echo server of their own (one process's fd limit). */
const OTHERS_PORT = ECHO_PORT + 1;
/** Both allow the held connections (203.0.113.0/24, the echo ports); they differ in one rule. */
const POLICIES = [0, 1].map((i) =>
  JSON.stringify({
    mode: 'allowlist',
    rules: [
      { host: '203.0.113.0/24', port: ECHO_PORT, protocol: 'tcp' },
      { host: '203.0.113.0/24', port: OTHERS_PORT, protocol: 'tcp' },
      { host: `192.0.2.${1 + i}`, port: 80, protocol: 'tcp' },
    ],
  }),
);

async function start(
  world: World,
  revocation: 'on' | 'off',
): Promise<{ egressd: Egressd; client: BenchClient }> {
  const egressd = await startEgressd({ world, node: NODE, args: ['--revocation', revocation] });
  return { egressd, client: new BenchClient(egressd, 4) };
}

async function put(client: BenchClient, id: string, body: string): Promise<{ ms: number; revoked: unknown }> {
  const started = performance.now();
  const r = await client.putPolicy(id, body, WAIT);
  const ms = performance.now() - started;
  if (r.status !== 200) throw new Error(`PUT ${id} answered ${r.status}: ${r.text.slice(0, 300)}`);
  return {
    ms,
    revoked: (r.body as { data: { enforcement: { revoked: unknown } } }).data.enforcement.revoked,
  };
}

/** `reps` PUTs of the computer alternating the two policies: p50 and p99 in ms. */
async function measure(client: BenchClient, id: string, reps: number): Promise<{ p50: number; p99: number }> {
  const took: number[] = [];
  for (let i = 0; i < reps; i++) took.push((await put(client, id, POLICIES[i % 2]!)).ms);
  return { p50: round(percentile(took, 50)), p99: round(percentile(took, 99)) };
}

async function main(): Promise<void> {
  const world = await createWorld();
  try {
    await echoServer(world, true);
    await echoServer(world, true, OTHERS_PORT);
    for (const id of ['subject', 'others']) world.makeCgroup(id);
    const results: Record<string, Record<string, { p50: number; p99: number }>> = { on: {}, off: {} };
    const others = { stop: async () => {} };
    for (const revocation of ['on', 'off'] as const) {
      const { egressd, client } = await start(world, revocation);
      try {
        for (const id of ['subject', 'others']) {
          await client.computers.put(id, { cgroup: world.cgroupRelative(id) });
          await put(client, id, POLICIES[0]!);
        }
        if (revocation === 'on' && OPTIONS.others > 0) {
          Object.assign(
            others,
            await holdMany(world, 'others', OPTIONS.others, `203.0.113.200:${OTHERS_PORT}`),
          );
        }
        for (const size of OPTIONS.sizes) {
          const held =
            size > 0 ? await holdMany(world, 'subject', size, `203.0.113.5:${ECHO_PORT}`) : undefined;
          try {
            const r = await measure(client, 'subject', OPTIONS.reps);
            results[revocation]![String(size)] = r;
            console.log(
              `revocation ${revocation}, ${size} open in the computer, ${OPTIONS.others} in another: ` +
                `PUT → 200 p50 ${r.p50} ms, p99 ${r.p99} ms`,
            );
          } finally {
            await held?.stop();
          }
        }
      } finally {
        client.close();
        await egressd.stop();
      }
    }
    // Closing: one PUT to isolated with the largest size open (revocation on).
    const { egressd, client } = await start(world, 'on');
    let closing: { ms: number; revoked: unknown } | undefined;
    const size = Math.max(...OPTIONS.sizes);
    try {
      // A new egressd has a new embedded Redis: register again.
      await client.computers.put('subject', { cgroup: world.cgroupRelative('subject') });
      await put(client, 'subject', POLICIES[0]!);
      const held = await holdMany(world, 'subject', size, `203.0.113.25:${ECHO_PORT}`);
      try {
        closing = await put(client, 'subject', JSON.stringify({ mode: 'isolated', rules: [] }));
      } finally {
        await held.stop();
      }
    } finally {
      await others.stop();
      client.close();
      await egressd.stop();
    }
    console.log(
      `PUT isolated closing ${size} connections: ${round(closing.ms)} ms (revoked: ${closing.revoked})`,
    );
    for (const s of OPTIONS.sizes) {
      const on = results['on']![String(s)]!;
      const off = results['off']![String(s)]!;
      console.log(
        `${s} open: on/off p50 ratio ${round(on.p50 / off.p50)}, p99 ratio ${round(on.p99 / off.p99)}`,
      );
    }
    writeResults('revoke', { machine: machine(), options: OPTIONS, results, closing });
  } finally {
    await world.destroy();
  }
}

await runBenchmark(main);
