/**
 * Atomic replace: while one process keeps connecting to an address allowed
 * before and after every replace, and another to an address allowed by
 * neither, a thousand replaces never give EPERM to the first nor success to
 * the second. Replaces alternate between an allowlist and a denylist, so
 * mode and rule set change together.
 */
import test from 'ava';
import { Enforcer } from '../../daemon/kernel/enforcer.js';
import type { Policy } from '../../policy/types.js';
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

const REPLACES = 1000;

// 192.0.2.1:80 is allowed by both; 192.0.2.2:80 by neither.
const allowlist: Policy = {
  mode: 'allowlist',
  rules: [
    { host: '192.0.2.1', protocol: 'tcp', port: 80 },
    { host: '198.51.100.0/24', protocol: 'any' },
    ...Array.from({ length: 200 }, (_, i) => ({ host: `203.0.113.${i}`, protocol: 'udp' as const })),
  ],
};
const denylist: Policy = {
  mode: 'denylist',
  rules: [
    { host: '192.0.2.2', protocol: 'any' },
    { host: '192.0.2.0/30', protocol: 'udp' },
    { host: '2001:db8::/32', protocol: 'any' },
  ],
};

test.serial('a thousand replaces never let a connect see a mix or no policy', async (t) => {
  const cg = world.makeCgroup('atomic');
  enforcer.attach('atomic', cg.relative, allowlist, 1n);
  const allowed = world.spawnProbe({ cgroup: cg.path }, 'loop:60000:10000000:tcp:192.0.2.1:80');
  const denied = world.spawnProbe({ cgroup: cg.path }, 'loop:60000:10000000:tcp:192.0.2.2:80');
  await Promise.all([allowed.ready, denied.ready]);
  for (let i = 0; i < REPLACES; i++) {
    enforcer.apply('atomic', i % 2 === 0 ? denylist : allowlist, BigInt(i + 2));
    // Let the probes run between replaces, and the sweeper delete retired ids.
    await new Promise((resolve) => setImmediate(resolve));
    if (i % 50 === 0) await enforcer.sweep();
  }
  await enforcer.sweep();
  const [a] = await allowed.stop();
  const [d] = await denied.stop();
  t.log(`allowed probe: ${JSON.stringify(a?.counts)}; denied probe: ${JSON.stringify(d?.counts)}`);
  t.true((a?.counts?.ok ?? 0) > 0, 'the allowed probe connected');
  t.is(a?.counts?.EPERM ?? 0, 0, 'the allowed address was never refused');
  t.true((d?.counts?.EPERM ?? 0) > 0, 'the denied probe was refused');
  t.is(d?.counts?.ok ?? 0, 0, 'the denied address never connected');
  t.deepEqual(Object.keys(a?.counts ?? {}), ['ok']);
  t.deepEqual(Object.keys(d?.counts ?? {}), ['EPERM']);
  enforcer.detach('atomic');
});

test.serial('retired policies leave no entries behind', async (t) => {
  const cg = world.makeCgroup('sweep');
  enforcer.attach('sweep', cg.relative, allowlist, 1n);
  for (let i = 0; i < 20; i++) enforcer.apply('sweep', i % 2 ? allowlist : denylist, BigInt(i + 2));
  enforcer.detach('sweep');
  await enforcer.sweep();
  t.deepEqual(enforcer.ruleEntryCounts(), { v4: 0, v6: 0, ports: 0 });
});

test.serial(
  'computers with identical rules share one set of entries, and each keeps it while the other changes',
  async (t) => {
    const a = world.makeCgroup('share-a');
    const b = world.makeCgroup('share-b');
    enforcer.attach('share-a', a.relative, allowlist, 1n);
    enforcer.attach('share-b', b.relative, { ...allowlist, rules: [...allowlist.rules].reverse() }, 1n);
    const ids = enforcer
      .list()
      .filter((c) => c.id.startsWith('share-'))
      .map((c) => c.policyId);
    t.is(ids.length, 2);
    t.is(ids[0], ids[1], 'one policy id for both');
    const counts = enforcer.ruleEntryCounts();
    enforcer.apply('share-a', denylist, 2n);
    await enforcer.sweep();
    t.deepEqual(await world.probeResults({ cgroup: b.path }, 'tcp:192.0.2.1:80', 'tcp:192.0.2.2:80'), [
      'ok',
      'EPERM',
    ]);
    t.deepEqual(
      await world.probeResults({ cgroup: a.path }, 'udp-sendto:192.0.2.1:80', 'tcp:203.0.113.5:80'),
      ['EPERM', 'ok'],
    );
    t.true(enforcer.ruleEntryCounts().v4 >= counts.v4, 'the shared entries stayed for share-b');
    enforcer.detach('share-a');
    enforcer.detach('share-b');
    await enforcer.sweep();
    t.deepEqual(enforcer.ruleEntryCounts(), { v4: 0, v6: 0, ports: 0 });
  },
);
