/**
 * Observations: the kernel counts where each computer's calls went (let
 * through: allowed, or refused in audit), the agent's Observer names them
 * (the hostname the computer's DNS taught, else the address) and merges
 * them into Redis, bounded; nothing for refusals, DNS or loopback; a
 * deleted computer's observations go with it. Real programs, a real probe,
 * a real redis-server.
 */
import test from 'ava';
import { pino } from 'pino';
import { Observer } from '../../daemon/agent/observer.js';
import { Enforcer } from '../../daemon/kernel/enforcer.js';
import { MAX_OBSERVATIONS, type Observation, Store } from '../../store/store.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { createWorld, type World } from '../helpers/world.js';

let world: World;
let enforcer: Enforcer;
let redis: TestRedis;
let store: Store;
let observer: Observer;

test.before(async () => {
  world = await createWorld();
  enforcer = Enforcer.open({ pinDir: world.pinDir, cgroupRoot: world.cgroupMount });
  redis = await startRedis();
  store = new Store({ url: redis.url });
  await store.connect();
  observer = new Observer(enforcer, store, pino({ level: 'silent' }));
});

test.after.always(async () => {
  await store?.close();
  await redis?.cleanup();
  enforcer?.close();
  await world?.destroy();
});

/** A computer in Redis and in the kernel, at world cgroup `id`. */
async function computer(id: string, policy: Parameters<Enforcer['attach']>[2]): Promise<string> {
  const cg = world.makeCgroup(id);
  await store.putComputer(id, { cgroup: cg.relative, node: 'n' });
  enforcer.attach(id, cg.relative, policy, 1n);
  return cg.path;
}

const brief = (list: Observation[] | undefined) =>
  (list ?? []).map((o) => `${o.host} ${o.port}/${o.protocol} x${o.count}`).sort();

test.serial(
  'what a computer connected to: counted per destination, named when DNS named it, into Redis',
  async (t) => {
    const cg = await computer('watched', {
      mode: 'allowlist',
      rules: [
        { host: 'named.test', protocol: 'any' },
        { host: '192.0.2.0/24', protocol: 'any' },
      ],
    });
    enforcer.learn('watched', ['named.test'], [[203, 0, 113, 40]], 300);
    const before = Date.now();
    t.deepEqual(
      await world.probeResults(
        { cgroup: cg },
        'tcp:192.0.2.1:80',
        'tcp:192.0.2.1:80',
        'udp-sendto:192.0.2.2:443',
        'tcp:203.0.113.40:443',
        'tcp:198.51.100.1:80',
      ),
      ['ok', 'ok', 'ok', 'ok', 'EPERM'],
    );
    await observer.flush();
    const seen = await store.getObservations('watched');
    t.deepEqual(
      brief(seen),
      ['192.0.2.1 80/tcp x2', '192.0.2.2 443/udp x1', 'named.test 443/tcp x1'],
      'the refused one is not there',
    );
    for (const o of seen ?? [])
      t.true(o.firstSeen >= before - 1000 && o.lastSeen <= Date.now() + 1000, 'wall-clock times');
    // Counts add up across flushes; only what is new is written.
    await world.probeResults({ cgroup: cg }, 'tcp:192.0.2.1:80');
    await observer.flush();
    await observer.flush();
    t.deepEqual(brief(await store.getObservations('watched')).slice(0, 1), ['192.0.2.1 80/tcp x3']);
  },
);

test.serial(
  'in audit the would-be refusals are observed too; an unrestricted computer is observed',
  async (t) => {
    const audited = await computer('audited', { mode: 'isolated', rules: [], audit: true });
    const open = await computer('open', { mode: 'unrestricted', rules: [] });
    await world.probeResults({ cgroup: audited }, 'tcp:198.51.100.1:80', 'tcp:[2001:db8::1]:443');
    await world.probeResults({ cgroup: open }, 'udp-connect:192.0.2.1:5353');
    await observer.flush();
    t.deepEqual(brief(await store.getObservations('audited')), [
      '198.51.100.1 80/tcp x1',
      '2001:db8::1 443/tcp x1',
    ]);
    t.deepEqual(brief(await store.getObservations('open')), ['192.0.2.1 5353/udp x1']);
  },
);

test.serial(
  'bounded in Redis: the most recently seen are kept; a deleted computer takes its observations along',
  async (t) => {
    await store.putComputer('many', { cgroup: world.makeCgroup('many').relative, node: 'n' });
    const many: Observation[] = Array.from({ length: MAX_OBSERVATIONS + 50 }, (_, i) => ({
      host: `10.0.${i >> 8}.${i & 255}`,
      port: 443,
      protocol: 'tcp',
      count: 1,
      firstSeen: 1_000 + i,
      lastSeen: 1_000 + i,
    }));
    await store.putObservations('many', many);
    const kept = (await store.getObservations('many')) ?? [];
    t.is(kept.length, MAX_OBSERVATIONS);
    t.is(Math.min(...kept.map((o) => o.lastSeen)), 1_050, 'the 50 least recently seen went');
    t.deepEqual(await store.getObservations('many', '', 1_000 + MAX_OBSERVATIONS + 49), [kept[0]!], 'since');
    t.true(await store.deleteComputer('many'));
    t.is(await store.getObservations('many'), undefined);
    await store.putObservations('many', many.slice(0, 1));
    t.is(
      await store.redis.exists('egressd:computer:many:observed'),
      0,
      'a late write after the DELETE is dropped',
    );
  },
);
