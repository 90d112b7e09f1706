/** The agent's metrics endpoint (egressd agent) serves valid Prometheus text with what the agent measures. */
import type { AddressInfo } from 'node:net';
import test from 'ava';
import { pino } from 'pino';
import { Agent } from '../../daemon/agent/agent.js';
import { DenyEvents } from '../../daemon/events.js';
import { Enforcer } from '../../daemon/kernel/enforcer.js';
import { createAgentMetrics, serveMetrics } from '../../daemon/metrics.js';
import { Store } from '../../store/store.js';
import { parsePrometheus } from '../helpers/prometheus.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { createWorld, type World } from '../helpers/world.js';

let world: World;
let enforcer: Enforcer;
let redis: TestRedis;

test.before(async () => {
  world = await createWorld();
  enforcer = Enforcer.open({ pinDir: world.pinDir, cgroupRoot: world.cgroupMount });
  redis = await startRedis();
});

test.after.always(async () => {
  enforcer?.close();
  await redis?.cleanup();
  await world?.destroy();
});

test('agent /metrics: denials by computer and reason, drops, map memory; valid Prometheus text', async (t) => {
  const metrics = createAgentMetrics();
  const events = new DenyEvents({ enforcer, metrics, ratePerSecond: 1, burst: 2, sink: () => {} });
  const server = await serveMetrics(metrics.registry, '127.0.0.1', 0);
  const store = new Store({ url: redis.url });
  // Not started: the empty store would detach m1. Its periodic check is run by hand below.
  const agent = new Agent({
    store,
    enforcer,
    node: 'node-m',
    cgroupRoot: world.cgroupMount,
    log: pino({ level: 'silent' }),
    metrics,
  });
  t.teardown(async () => {
    events.close();
    server.close();
    await agent.stop();
    await store.close();
  });
  const cg = world.makeCgroup('m1');
  enforcer.attach('m1', cg.relative, { mode: 'isolated', rules: [] }, 1n);
  t.deepEqual(
    await world.probeResults(
      { cgroup: cg.path },
      'tcp:192.0.2.1:80',
      'tcp:192.0.2.1:80',
      'tcp:192.0.2.1:80',
      'raw4',
    ),
    ['EPERM', 'EPERM', 'EPERM', 'EPERM'],
  );
  events.poll();
  agent.verify(); // the agent's periodic check keeps the map memory gauge current
  const port = (server.address() as AddressInfo).port;
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const samples = parsePrometheus(text);
  t.is(samples.get('egressd_denials_total{computer="m1",reason="mode",audit="false"}'), 3);
  t.is(samples.get('egressd_denials_total{computer="m1",reason="socket",audit="false"}'), 1);
  t.is(
    samples.get('egressd_deny_events_dropped_total{computer="m1"}'),
    2,
    'a burst of 2, the other 2 dropped',
  );
  t.true((samples.get('egressd_map_memory_bytes{map="deny_events"}') ?? 0) > 0);
  t.is((await fetch(`http://127.0.0.1:${port}/other`)).status, 404);
});
