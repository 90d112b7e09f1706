/**
 * Versions never go back for a computer (issue 19): a Redis that comes back
 * with an older copy of the store (a failover to a replica that missed the
 * last write) does not make the agent loosen a policy it put in force; it
 * refuses (`version_regressed`), on the resync after the outage and on the
 * resync of a restarted agent, until a PUT draws a higher version.
 */
import { Writable } from 'node:stream';
import test from 'ava';
import { pino } from 'pino';
import { Agent } from '../../daemon/agent/agent.js';
import { Enforcer } from '../../daemon/kernel/enforcer.js';
import { type AgentMetrics, createAgentMetrics } from '../../daemon/metrics.js';
import { keys } from '../../store/keys.js';
import { Store } from '../../store/store.js';
import { type Harness, startHarness } from '../api/harness.js';
import { createWorld, type World } from '../helpers/world.js';

let world: World;
let api: Harness;
let enforcer: Enforcer;
let store: Store;
let agent: Agent;
let metrics: AgentMetrics;
/** The agent's log lines (JSON). */
const lines: { msg: string; computer?: string; kept?: number; asked?: number }[] = [];
const log = pino(
  { level: 'warn' },
  new Writable({
    write(chunk, _enc, done) {
      for (const line of String(chunk).split('\n')) if (line) lines.push(JSON.parse(line));
      done();
    },
  }),
);

async function startAgent(): Promise<void> {
  enforcer = Enforcer.open({ pinDir: world.pinDir, cgroupRoot: world.cgroupMount });
  enforcer.setDnsConfig([45000, 45999]);
  store = new Store({ url: api.redis.url });
  await store.connect();
  metrics = createAgentMetrics();
  agent = new Agent({
    store,
    enforcer,
    node: 'node-a',
    cgroupRoot: world.cgroupMount,
    log,
    maxBackoffMs: 200,
    blockMs: 1000,
    metrics,
    roots: [world.cgroupRelative()],
  });
  await agent.start();
}

async function stopAgent(): Promise<void> {
  await agent?.stop();
  await store?.close();
  enforcer?.close();
}

test.before(async () => {
  world = await createWorld();
  api = await startHarness({ defaultNode: 'node-a' });
  await startAgent();
});

test.after.always(async () => {
  await stopAgent();
  await api?.close();
  await world?.destroy();
});

async function waitFor<T>(what: string, fn: () => T | undefined | Promise<T | undefined>, ms = 8000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Every key of the store as DUMP gives it: what a replica holds. */
async function dumpAll(redis: Store['redis']): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  for (const key of await redis.keys('*')) {
    const value = await redis.dumpBuffer(key);
    if (value) out.set(key, value);
  }
  return out;
}

const regressions = async (id: string) =>
  (await metrics.versionRegressions.get()).values.find((v) => v.labels['computer'] === id)?.value ?? 0;

test.serial(
  'a failover to an older store: the newer policy stays in force, version_regressed is reported and logged once, until a PUT draws a higher version',
  async (t) => {
    const id = 'regress';
    const cg = world.makeCgroup(id);
    t.is((await api.call('PUT', `/api/v1/computers/${id}`, { body: { cgroup: cg.relative } })).status, 201);
    const loose = { mode: 'allowlist', rules: [{ host: '192.0.2.2', port: 80, protocol: 'tcp' }] };
    const older = await api.call('PUT', `/api/v1/computers/${id}/network-policy`, { body: loose });
    t.is(older.status, 200, older.text);
    const vOld = older.body.data.version as number;
    // The replica has everything up to here (the older policy acknowledged) and misses what follows.
    const replica = await dumpAll(api.store.redis);
    // A replica of the same store: its identity too, so the agents keep their version memory there
    // (a store that comes back empty is another matter: store-lost.test.ts).
    t.true(replica.has(keys.storeIdentity()), 'the store identity is replicated like the rest');
    const tight = await api.call('PUT', `/api/v1/computers/${id}/network-policy`, {
      body: { mode: 'isolated' },
    });
    t.is(tight.status, 200, tight.text);
    const vNew = tight.body.data.version as number;
    t.true(vNew > vOld);
    t.deepEqual(await world.probeResults({ cgroup: cg.path }, 'tcp:192.0.2.2:80'), ['EPERM']);

    // Failover: the primary dies; what answers next holds the replica's copy. The agent is down
    // meanwhile (a host whose Redis failed over meets the copy on its next full resync either way;
    // here that resync is a restarted agent's, which also has to know the version in force from
    // the kernel: it cannot have met the newer data after the restart).
    await stopAgent();
    await api.redis.stop();
    await api.redis.restart();
    const redis = new Store({ url: api.redis.url });
    t.teardown(() => redis.close());
    await redis.connect();
    for (const [key, value] of replica) await redis.redis.restore(key, 0, value, 'REPLACE');
    t.is(Number(await redis.redis.hget(keys.policy(id), 'version')), vOld);
    await startAgent();

    const regressed = await waitFor(
      'version_regressed',
      async () => {
        const r = await api.call('GET', `/api/v1/computers/${id}/network-policy`);
        return r.status === 200 && r.body.data.enforcement.state === 'version_regressed'
          ? r.body.data
          : undefined;
      },
      15_000,
    );
    t.is(regressed.version, vOld);
    t.is(regressed.mode, 'allowlist', 'the store holds the older, looser policy');
    t.regex(regressed.enforcement.reason, new RegExp(`keeps version ${vNew} .*refuses version ${vOld}`));
    t.is(regressed.enforcement.enforced_version, null);
    t.deepEqual(
      await world.probeResults({ cgroup: cg.path }, 'tcp:192.0.2.2:80'),
      ['EPERM'],
      'the newer (isolated) policy is still in force',
    );
    t.is(enforcer.state(id)?.version, BigInt(vNew));
    const warned = () => lines.filter((l) => l.computer === id && /refused an older version/.test(l.msg));
    t.like(warned(), [{ kept: vNew, asked: vOld }]);
    t.is(await regressions(id), 1);
    t.true(
      Number(await redis.redis.get(keys.version())) >= vNew,
      'the counter is raised to the kept version',
    );
    t.is(agent.report().find((c) => c.id === id)?.state, 'version_regressed');

    // The periodic check and another resync neither repair nor log it again.
    agent.verify();
    await redis.redis.client('KILL', 'TYPE', 'normal', 'SKIPME', 'yes');
    await waitFor('resynced', () => agent.status === 'following');
    await new Promise((r) => setTimeout(r, 300));
    t.is(warned().length, 1, 'logged once per computer and version');
    t.is(await regressions(id), 1);

    // A restarted agent knows the version in force from the kernel and refuses on its full resync too.
    await stopAgent();
    await startAgent();
    t.is(agent.report().find((c) => c.id === id)?.state, 'version_regressed');
    t.deepEqual(await world.probeResults({ cgroup: cg.path }, 'tcp:192.0.2.2:80'), ['EPERM']);
    t.is(enforcer.state(id)?.version, BigInt(vNew));

    // The operator takes the stored policy back: the same PUT draws a version above the kept one.
    const again = await api.call('PUT', `/api/v1/computers/${id}/network-policy`, { body: loose });
    t.is(again.status, 200, again.text);
    t.true(again.body.data.version > vNew);
    t.is(again.body.data.enforcement.state, 'enforced');
    t.deepEqual(await world.probeResults({ cgroup: cg.path }, 'tcp:192.0.2.2:80'), ['ok']);

    // A real removal still detaches.
    t.is((await api.call('DELETE', `/api/v1/computers/${id}`)).status, 204);
    await waitFor('detached', () => enforcer.state(id) === undefined);
  },
);
