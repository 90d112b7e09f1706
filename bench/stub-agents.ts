/**
 * Simulated hosts for bench/capacity.ts, STUB KERNEL, BENCH ONLY: one
 * process (forked with an IPC channel) running `hosts` real Agents
 * (daemon/agent/agent.ts), each with a Store of its own on the real Redis
 * (so its own connections, change stream reader and acknowledgements) and
 * its own node `<prefix><h>`, but a StubEnforcer (bench/stub-enforcer.ts)
 * instead of the kernel. No root needed.
 *
 * It records when each acknowledgement was stored (the agent's
 * ackEnforced() resolved: Redis has it), as epoch milliseconds with
 * sub-millisecond precision (performance.timeOrigin + now(), comparable
 * with the parent's), and the agents' own egressd_enforcement_lag_seconds
 * histogram (change record written → refreshed). Messages:
 *
 *   parent → child: { type: 'collect' } | { type: 'stop' }
 *   child → parent: { type: 'ready', resyncMs, connections? } |
 *                   { type: 'collected', acks: [id, version, atMs][], histogram: [key, value][], cpuS } |
 *                   { type: 'error', message }
 *
 *   node dist/bench/stub-agents.js '{"redisUrl":"...","hosts":50,"prefix":"host-","cgroupRoot":"/tmp/..."}'
 */
import { performance } from 'node:perf_hooks';
import { pino } from 'pino';
import { Agent } from '../daemon/agent/agent.js';
import { createAgentMetrics } from '../daemon/metrics.js';
import { Store } from '../store/store.js';
import { STUB_LABEL, StubEnforcer } from './stub-enforcer.js';

export interface StubAgentsConfig {
  redisUrl: string;
  hosts: number;
  /** Node names are `${prefix}${h}`. */
  prefix: string;
  /** The stub's "cgroup2 mount": a plain directory with one subdirectory per computer. */
  cgroupRoot: string;
}

export type StubAgentsMessage =
  | { type: 'ready'; resyncMs: number }
  | { type: 'collected'; acks: [string, number, number][]; histogram: [string, number][]; cpuS: number }
  | { type: 'error'; message: string };

const send = (m: StubAgentsMessage) => process.send?.(m);
const now = () => performance.timeOrigin + performance.now();

async function main(): Promise<void> {
  const config = JSON.parse(process.argv[2] ?? '{}') as StubAgentsConfig;
  const log = pino({ level: 'warn' }).child({ bench: STUB_LABEL });
  const metrics = createAgentMetrics();
  let acks: [string, number, number][] = [];
  const stores: Store[] = [];
  const agents: Agent[] = [];
  const stop = async () => {
    await Promise.all(agents.map((a) => a.stop()));
    for (const s of stores) await s.close();
    process.exit(0);
  };
  // The parent went away (even with kill -9): end with it.
  process.once('disconnect', () => void stop());
  process.on('message', (m: { type: string }) => {
    if (m.type === 'stop') void stop();
    else if (m.type === 'collect') {
      void (async () => {
        const histogram: [string, number][] = [];
        for (const v of (await metrics.enforcementLagSeconds.get()).values) {
          const le = v.labels['le'];
          histogram.push([`${v.metricName}${le === undefined ? '' : `{le="${String(le)}"}`}`, v.value]);
        }
        const cpu = process.cpuUsage();
        send({ type: 'collected', acks, histogram, cpuS: (cpu.user + cpu.system) / 1e6 });
        acks = [];
      })();
    }
  });
  for (let h = 0; h < config.hosts; h++) {
    const store = new Store({ url: config.redisUrl });
    // Instrumentation only: the time each acknowledgement is stored (Redis answered the write).
    const ackEnforced = store.ackEnforced.bind(store);
    store.ackEnforced = async (id, version, ...rest) => {
      const stored = await ackEnforced(id, version, ...rest);
      acks.push([id, version, now()]);
      return stored;
    };
    stores.push(store);
    const enforcer = new StubEnforcer(config.cgroupRoot);
    agents.push(
      new Agent({
        store,
        enforcer: enforcer.asEnforcer(),
        node: `${config.prefix}${h}`,
        cgroupRoot: config.cgroupRoot,
        log,
        metrics,
        roots: [],
        protectedCgroups: [],
      }),
    );
  }
  const started = now();
  await Promise.all(agents.map((a) => a.start()));
  send({ type: 'ready', resyncMs: now() - started });
}

main().catch((err: unknown) => {
  send({ type: 'error', message: err instanceof Error ? (err.stack ?? err.message) : String(err) });
  process.exit(1);
});
