/** The agent's metrics endpoint (egressd agent) serves valid Prometheus text with what the agent measures. */
import type { AddressInfo } from 'node:net';
import test from 'ava';
import { DenyEvents } from '../../daemon/events.js';
import { Enforcer } from '../../daemon/kernel/enforcer.js';
import { createAgentMetrics, serveMetrics } from '../../daemon/metrics.js';
import { parsePrometheus } from '../helpers/prometheus.js';
import { createWorld, type World } from '../helpers/world.js';

let world: World;
let enforcer: Enforcer;

test.before(async () => {
  world = await createWorld();
  enforcer = Enforcer.open({ pinDir: world.pinDir, cgroupRoot: world.cgroupMount });
});

test.after.always(async () => {
  enforcer?.close();
  await world?.destroy();
});

test('agent /metrics: denials by computer and reason, drops, map memory; valid Prometheus text', async (t) => {
  const metrics = createAgentMetrics();
  const events = new DenyEvents({ enforcer, metrics, ratePerSecond: 1, burst: 2, sink: () => {} });
  const server = await serveMetrics(metrics.registry, '127.0.0.1', 0);
  t.teardown(() => {
    events.close();
    server.close();
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
  for (const [map, n] of Object.entries(enforcer.mapMemory())) metrics.mapMemory.set({ map }, n);
  const port = (server.address() as AddressInfo).port;
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const samples = parsePrometheus(text);
  t.is(samples.get('egressd_denials_total{computer="m1",reason="mode"}'), 3);
  t.is(samples.get('egressd_denials_total{computer="m1",reason="socket"}'), 1);
  t.is(
    samples.get('egressd_deny_events_dropped_total{computer="m1"}'),
    2,
    'a burst of 2, the other 2 dropped',
  );
  t.true((samples.get('egressd_map_memory_bytes{map="deny_events"}') ?? 0) > 0);
  t.is((await fetch(`http://127.0.0.1:${port}/other`)).status, 404);
});
