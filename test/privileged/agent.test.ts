/**
 * The agent with real components: redis-server, the API, BPF, cgroups and
 * the test world. A PUT that answers 200 is in force when it returns; the
 * agent resyncs after outages and restarts; cgroups that appear late or go
 * away are handled.
 */
import { rmdirSync } from 'node:fs';
import test from 'ava';
import { pino } from 'pino';
import { Agent } from '../../daemon/agent/agent.js';
import type { DnsProxy } from '../../daemon/dns/proxy.js';
import { Enforcer } from '../../daemon/kernel/enforcer.js';
import { keys } from '../../store/keys.js';
import { Store } from '../../store/store.js';
import { type Harness, startHarness } from '../api/harness.js';
import { testDnsProxy } from '../helpers/dns-proxy.js';
import { type Dnsmasq, startDnsmasq } from '../helpers/dnsmasq.js';
import { createWorld, type World } from '../helpers/world.js';

let world: World;
let api: Harness;
let enforcer: Enforcer;
let store: Store;
let agent: Agent;
let proxy: DnsProxy;
let dnsmasq: Dnsmasq;

const log = pino({ level: process.env['EGRESSD_TEST_LOG'] ?? 'silent' });

async function startAgent(): Promise<void> {
  enforcer = Enforcer.open({ pinDir: world.pinDir, cgroupRoot: world.cgroupMount });
  enforcer.setDnsConfig([44000, 44999]);
  store = new Store({ url: api.redis.url });
  await store.connect();
  proxy = testDnsProxy(world, enforcer, dnsmasq, [44000, 44999], {
    log,
    onLearned: (...args) => agent.learned(...args),
  });
  agent = new Agent({
    store,
    enforcer,
    node: 'node-a',
    cgroupRoot: world.cgroupMount,
    log,
    maxBackoffMs: 200,
    blockMs: 1000,
    proxy,
    roots: [world.cgroupRelative()],
  });
  await agent.start();
}

async function stopAgent(): Promise<void> {
  await agent?.stop();
  await proxy?.close();
  await store?.close();
  enforcer?.close();
}

test.before(async () => {
  world = await createWorld();
  dnsmasq = await startDnsmasq(['host-record=learned.test,203.0.113.77,300'], { logQueries: true });
  api = await startHarness({ defaultNode: 'node-a' });
  await startAgent();
});

test.after.always(async () => {
  await stopAgent();
  await api?.close();
  await dnsmasq?.stop();
  await world?.destroy();
});

async function register(id: string): Promise<string> {
  const cg = world.makeCgroup(id);
  const r = await api.call('PUT', `/api/v1/computers/${id}`, { body: { cgroup: cg.relative } });
  if (r.status !== 201 && r.status !== 200) throw new Error(`register ${id}: ${r.status} ${r.text}`);
  return cg.path;
}

async function waitFor<T>(
  what: string,
  fn: () => T | undefined | Promise<T | undefined>,
  ms = 5000,
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

test.serial('a PUT that answers 200 is in force when it returns (no sleeps)', async (t) => {
  const cg = await register('put-200');
  const put = await api.call('PUT', '/api/v1/computers/put-200/network-policy', {
    body: { mode: 'allowlist', rules: [{ host: '192.0.2.1', port: 80, protocol: 'tcp' }] },
  });
  t.is(put.status, 200, put.text);
  t.is(put.body.data.enforcement.state, 'enforced');
  t.deepEqual(
    await world.probeResults(
      { cgroup: cg },
      'tcp:192.0.2.1:80',
      'tcp:192.0.2.2:80',
      'udp-sendto:192.0.2.1:80',
    ),
    ['ok', 'EPERM', 'EPERM'],
  );
  const iso = await api.call('PUT', '/api/v1/computers/put-200/network-policy', {
    body: { mode: 'isolated' },
  });
  t.is(iso.status, 200);
  t.deepEqual(await world.probeResults({ cgroup: cg }, 'tcp:192.0.2.1:80'), ['EPERM']);
  const reset = await api.call('DELETE', '/api/v1/computers/put-200/network-policy');
  t.is(reset.status, 200);
  t.deepEqual(await world.probeResults({ cgroup: cg }, 'tcp:192.0.2.2:80'), ['ok']);
});

test.serial('deleting a computer detaches it', async (t) => {
  const cg = await register('to-delete');
  t.is(
    (await api.call('PUT', '/api/v1/computers/to-delete/network-policy', { body: { mode: 'isolated' } }))
      .status,
    200,
  );
  t.deepEqual(await world.probeResults({ cgroup: cg }, 'tcp:192.0.2.1:80'), ['EPERM']);
  t.is((await api.call('DELETE', '/api/v1/computers/to-delete')).status, 204);
  await waitFor('detach', () => enforcer.state('to-delete') === undefined);
  // Its cgroup is still below the sandbox root, where no computer governs it now: no network.
  t.deepEqual(await world.probeResults({ cgroup: cg }, 'tcp:192.0.2.1:80'), ['EPERM']);
  t.false(enforcer.guard.isGoverned(enforcer.attachedCgroupId('to-delete') ?? 0n));
});

test.serial(
  'a computer registered before its cgroup exists: cgroup_missing at once, with the path; enforced within a second of mkdir',
  async (t) => {
    const relative = world.cgroupRelative('late/sandbox');
    const reg = await api.call('PUT', '/api/v1/computers/late', { body: { cgroup: relative } });
    t.is(reg.status, 201, reg.text);
    const started = Date.now();
    const put = await api.call('PUT', '/api/v1/computers/late/network-policy', {
      body: { mode: 'isolated' },
    });
    t.is(put.status, 202);
    t.true(Date.now() - started < 2000, `answered in ${Date.now() - started} ms, not after the 5 s wait`);
    t.is(put.body.data.enforcement.state, 'cgroup_missing');
    t.true(
      put.body.data.enforcement.reason.includes(
        `${world.cgroupMount}/${relative} does not exist on node node-a`,
      ),
      put.body.data.enforcement.reason,
    );
    const cg = world.makeCgroup('late/sandbox');
    const made = Date.now();
    // This caller knows the cgroup is about to appear: it waits past cgroup_missing.
    const ack = await store.waitEnforced('late', put.body.data.version, 1000, { pastMissing: true });
    t.is(ack?.state, 'enforced', `within a second of mkdir (${Date.now() - made} ms)`);
    t.is(ack?.version, put.body.data.version);
    const get = await api.call('GET', '/api/v1/computers/late/network-policy');
    t.like(get.body.data.enforcement, { state: 'enforced', reason: null });
    t.deepEqual(await world.probeResults({ cgroup: cg.path }, 'tcp:192.0.2.1:80'), ['EPERM']);

    // The sandbox ends: its cgroup goes, and the agent cleans up the pins.
    rmdirSync(cg.path);
    await waitFor('cleanup', () => enforcer.state('late') === undefined);
    // It comes back under the same path: attached again with the same policy.
    const again = world.makeCgroup('late/sandbox');
    await waitFor('re-attach', () => enforcer.state('late')?.mode === 'isolated');
    t.deepEqual(await world.probeResults({ cgroup: again.path }, 'tcp:192.0.2.1:80'), ['EPERM']);
  },
);

test.serial(
  'Redis outage: enforcement holds, changes made meanwhile are applied after reconnect',
  async (t) => {
    const cg = await register('outage');
    t.is(
      (await api.call('PUT', '/api/v1/computers/outage/network-policy', { body: { mode: 'isolated' } }))
        .status,
      200,
    );
    await api.redis.stop();
    await waitFor('disconnected', () => agent.status === 'disconnected');
    t.deepEqual(
      await world.probeResults({ cgroup: cg }, 'tcp:192.0.2.1:80'),
      ['EPERM'],
      'still enforced while Redis is down',
    );
    await api.redis.restart();
    // A change while the agent is still reconnecting: applied by the resync or the stream.
    await waitFor('API back', async () => (await api.call('GET', '/readyz')).status === 200);
    const put = await api.call('PUT', '/api/v1/computers/outage/network-policy', {
      body: { mode: 'allowlist', rules: [{ host: '192.0.2.2', protocol: 'tcp' }] },
    });
    t.is(put.status, 200, put.text);
    t.deepEqual(await world.probeResults({ cgroup: cg }, 'tcp:192.0.2.1:80', 'tcp:192.0.2.2:80'), [
      'EPERM',
      'ok',
    ]);
  },
);

test.serial(
  'agent restart: pins keep enforcing, the new agent adopts and catches up on what changed',
  async (t) => {
    const cg = await register('restart');
    t.is(
      (await api.call('PUT', '/api/v1/computers/restart/network-policy', { body: { mode: 'isolated' } }))
        .status,
      200,
    );
    await stopAgent();
    t.deepEqual(
      await world.probeResults({ cgroup: cg }, 'tcp:192.0.2.1:80'),
      ['EPERM'],
      'enforced with no agent',
    );
    // Changes while no agent runs: a new policy, and a computer deleted.
    const pending = await api.call('PUT', '/api/v1/computers/restart/network-policy?wait=0', {
      body: { mode: 'denylist', rules: [{ host: '192.0.2.2', protocol: 'any' }] },
    });
    t.is(pending.status, 202);
    const gone = await register('gone-while-down');
    t.is(
      (
        await api.call('PUT', '/api/v1/computers/gone-while-down/network-policy?wait=0', {
          body: { mode: 'isolated' },
        })
      ).status,
      202,
    );
    t.is((await api.call('DELETE', '/api/v1/computers/gone-while-down')).status, 204);
    await startAgent();
    t.true(enforcer.adopted);
    t.deepEqual(await world.probeResults({ cgroup: cg }, 'tcp:192.0.2.1:80', 'tcp:192.0.2.2:80'), [
      'ok',
      'EPERM',
    ]);
    // Detached by the resync; below the sandbox root, a cgroup no computer governs has no network.
    t.is(enforcer.state('gone-while-down'), undefined);
    t.deepEqual(await world.probeResults({ cgroup: gone }, 'tcp:192.0.2.1:80'), ['EPERM']);
    const report = agent.report().find((c) => c.id === 'restart');
    t.is(report?.state, 'enforced');
    t.is(report?.enforcedVersion, pending.body.data.version);
  },
);

test.serial(
  'a change record the agent missed (trimmed from the stream) is repaired by a resync',
  async (t) => {
    const cgX = await register('trim-x');
    const cgY = await register('trim-y');
    t.is(
      (await api.call('PUT', '/api/v1/computers/trim-x/network-policy', { body: { mode: 'isolated' } }))
        .status,
      200,
    );
    t.is(
      (await api.call('PUT', '/api/v1/computers/trim-y/network-policy', { body: { mode: 'isolated' } }))
        .status,
      200,
    );
    // Behind the API's back and in one transaction (so the agent's blocked XREAD sees only the end
    // state): x's policy changes with its record, the stream is trimmed to nothing, and y gets a record.
    const redis = api.store.redis;
    const version = await redis.incr(keys.version());
    const stream = keys.nodeChanges('node-a');
    const now = new Date().toISOString();
    await redis
      .multi()
      .hset(
        keys.policy('trim-x'),
        'mode',
        'allowlist',
        'rules',
        '[{"host":"192.0.2.1","protocol":"tcp"}]',
        'version',
        version,
        'updated_at',
        now,
      )
      .xadd(
        stream,
        '*',
        'computer_id',
        'trim-x',
        'kind',
        'policy',
        'version',
        version,
        'cgroup',
        '',
        'at',
        now,
      )
      .xtrim(stream, 'MAXLEN', 0)
      .xadd(
        stream,
        '*',
        'computer_id',
        'trim-y',
        'kind',
        'policy',
        'version',
        version,
        'cgroup',
        '',
        'at',
        now,
      )
      .exec();
    const ack = await store.waitEnforced('trim-x', version, 5000);
    t.is(ack?.version, version, 'the agent noticed the gap and resynced');
    t.deepEqual(await world.probeResults({ cgroup: cgX }, 'tcp:192.0.2.1:80', 'tcp:192.0.2.2:80'), [
      'ok',
      'EPERM',
    ]);
    t.deepEqual(await world.probeResults({ cgroup: cgY }, 'tcp:192.0.2.1:80'), ['EPERM']);
  },
);

test.serial(
  'two agents with different node names on one Redis each enforce only their own computers',
  async (t) => {
    const pinDirB = `${world.pinDir}/node-b`;
    const enforcerB = Enforcer.open({ pinDir: pinDirB, cgroupRoot: world.cgroupMount });
    const storeB = new Store({ url: api.redis.url });
    await storeB.connect();
    const agentB = new Agent({
      store: storeB,
      enforcer: enforcerB,
      node: 'node-b',
      cgroupRoot: world.cgroupMount,
      log,
      blockMs: 1000,
    });
    try {
      await agentB.start();
      const onA = world.makeCgroup('on-a');
      const onB = world.makeCgroup('on-b');
      t.is(
        (await api.call('PUT', '/api/v1/computers/on-a', { body: { cgroup: onA.relative, node: 'node-a' } }))
          .status,
        201,
      );
      t.is(
        (await api.call('PUT', '/api/v1/computers/on-b', { body: { cgroup: onB.relative, node: 'node-b' } }))
          .status,
        201,
      );
      for (const id of ['on-a', 'on-b']) {
        t.is(
          (await api.call('PUT', `/api/v1/computers/${id}/network-policy`, { body: { mode: 'isolated' } }))
            .status,
          200,
        );
      }
      t.truthy(enforcer.state('on-a'));
      t.is(enforcer.state('on-b'), undefined, 'agent A leaves node-b computers alone');
      t.truthy(enforcerB.state('on-b'));
      t.is(enforcerB.state('on-a'), undefined, 'agent B leaves node-a computers alone');
      // Moving a computer to the other node moves its enforcement.
      const moved = await api.call('PUT', '/api/v1/computers/on-a', {
        body: { cgroup: onA.relative, node: 'node-b' },
      });
      t.is(moved.status, 200);
      await waitFor('move to node-b', () => enforcerB.state('on-a') && !enforcer.state('on-a'));
      t.deepEqual(await world.probeResults({ cgroup: onA.path }, 'tcp:192.0.2.1:80'), ['EPERM']);
    } finally {
      await agentB.stop();
      await storeB.close();
      enforcerB.close();
    }
  },
);

test.serial('what a computer learns from DNS is visible through the API', async (t) => {
  const cg = await register('learns');
  const put = await api.call('PUT', '/api/v1/computers/learns/network-policy', {
    body: { mode: 'allowlist', rules: [{ host: 'learned.test', port: 443, protocol: 'tcp' }] },
  });
  t.is(put.status, 200);
  // dig in the host namespace (a loopback resolver: redirected to the proxy on 127.0.0.1).
  const { out } = await world.run(
    'dig',
    ['@127.0.0.53', '+short', '+tries=1', '+time=2', 'learned.test', 'A'],
    {
      cgroup: cg,
      netns: false,
    },
  );
  t.is(out.trim(), '203.0.113.77');
  const learned = await waitFor('the learned name in the API', async () => {
    const r = await api.call('GET', '/api/v1/computers/learns/network-policy/learned');
    return r.body.data.length > 0 ? r.body.data : undefined;
  });
  t.like(learned[0], { name: 'learned.test', address: '203.0.113.77' });
});

test.serial(
  "a computer's dns_upstream reaches the agent: set, changed back to the default, set again, and kept across a resync",
  async (t) => {
    const own = await startDnsmasq(['host-record=learned.test,203.0.113.177,300']);
    t.teardown(() => own.stop());
    const cg = await register('own-dns');
    const put = await api.call('PUT', '/api/v1/computers/own-dns/network-policy', {
      body: { mode: 'allowlist', rules: [{ host: 'learned.test', port: 443, protocol: 'tcp' }] },
    });
    t.is(put.status, 200, put.text);
    const ask = async () =>
      (
        await world.run('dig', ['@127.0.0.53', '+short', '+tries=1', '+time=2', 'learned.test', 'A'], {
          cgroup: cg,
          netns: false,
        })
      ).out.trim();
    t.is(await ask(), '203.0.113.77', 'the default upstream');
    const relative = world.cgroupRelative('own-dns');
    const setUpstream = (dns_upstream: string | null) =>
      api.call('PUT', '/api/v1/computers/own-dns', { body: { cgroup: relative, dns_upstream } });
    const upstreamIs = (port: number) =>
      waitFor(`the agent's DNS proxy to forward to port ${port}`, () =>
        proxy.upstreamOf('own-dns')?.port === port ? true : undefined,
      );
    t.is((await setUpstream(`${own.host}:${own.port}`)).status, 200);
    await upstreamIs(own.port);
    t.is(await ask(), '203.0.113.177', "the computer's own upstream");
    t.is((await setUpstream(null)).status, 200);
    await upstreamIs(dnsmasq.port);
    t.is(await ask(), '203.0.113.77');
    await setUpstream(`${own.host}:${own.port}`);
    await upstreamIs(own.port);
    // A new agent reads it from the node snapshot.
    await stopAgent();
    await startAgent();
    t.deepEqual(proxy.upstreamOf('own-dns'), { host: own.host, port: own.port });
    t.is(await ask(), '203.0.113.177');
    await api.call('DELETE', '/api/v1/computers/own-dns');
  },
);

test.serial(
  'learned addresses keep their names across an agent restart: a later policy still listing the name keeps them',
  async (t) => {
    const cg = await register('relearn');
    const policy = (rules: object[], query = '') =>
      api.call('PUT', `/api/v1/computers/relearn/network-policy${query}`, {
        body: { mode: 'allowlist', rules },
      });
    t.is((await policy([{ host: 'learned.test', port: 443, protocol: 'tcp' }])).status, 200);
    const { out } = await world.run('dig', ['@127.0.0.53', '+short', '+tries=1', '+time=2', 'learned.test'], {
      cgroup: cg,
      netns: false,
    });
    t.is(out.trim(), '203.0.113.77');
    await waitFor('the learned name in Redis', async () =>
      (await api.store.getLearned('relearn'))?.some((l) => l.address === '203.0.113.77'),
    );

    // 1. A new agent, then a policy change: the address stays allowed without resolving again.
    await stopAgent();
    await startAgent();
    t.is(
      (await policy([{ host: 'learned.test', port: 443, protocol: 'tcp' }, { host: '198.51.100.1' }])).status,
      200,
    );
    t.deepEqual(await world.probeResults({ cgroup: cg }, 'tcp:203.0.113.77:443', 'tcp:203.0.113.77:80'), [
      'ok',
      'EPERM',
    ]);

    // 2. The policy changes while no agent runs: the new agent carries the entry over to it (ports included).
    await stopAgent();
    t.is((await policy([{ host: '*.test', protocol: 'tcp' }], '?wait=0')).status, 202);
    await startAgent();
    t.deepEqual(await world.probeResults({ cgroup: cg }, 'tcp:203.0.113.77:443', 'tcp:203.0.113.77:80'), [
      'ok',
      'ok',
    ]);

    // 3. Without the name in Redis the entry is not carried over: fail closed, the application resolves again.
    await stopAgent();
    await api.store.redis.del(keys.learned('relearn'));
    t.is((await policy([{ host: 'learned.test', protocol: 'tcp' }], '?wait=0')).status, 202);
    await startAgent();
    t.deepEqual(await world.probeResults({ cgroup: cg }, 'tcp:203.0.113.77:443'), ['EPERM']);
    t.deepEqual(enforcer.learnedNames('relearn'), []);
  },
);

test.serial(
  'policies stored before dns existed still read and enforce: "isolated+block_dns" as dns none, an allowlist as dns listed',
  async (t) => {
    const isolated = await register('legacy-bdns');
    const allowlist = await register('legacy-allow');
    // Written the way an older API did, while no agent runs: no dns field, block_dns folded into the mode.
    await stopAgent();
    const redis = api.store.redis;
    const write = async (id: string, mode: string, rules: object[]) => {
      const version = await redis.incr(keys.version());
      await redis.hdel(keys.policy(id), 'dns');
      await redis.hset(keys.policy(id), 'mode', mode, 'rules', JSON.stringify(rules), 'version', version);
      return version;
    };
    const v1 = await write('legacy-bdns', 'isolated+block_dns', []);
    const v2 = await write('legacy-allow', 'allowlist', [
      { host: 'learned.test', port: 443, protocol: 'tcp' },
    ]);
    await startAgent();
    t.like(
      agent.report().find((r) => r.id === 'legacy-bdns'),
      { enforcedVersion: v1, state: 'enforced' },
    );
    t.like(
      agent.report().find((r) => r.id === 'legacy-allow'),
      { enforcedVersion: v2, state: 'enforced' },
    );
    t.is(enforcer.dnsPolicyOf('legacy-bdns')?.dns, 'none');
    t.is(enforcer.dnsPolicyOf('legacy-allow')?.dns, 'listed');
    const got = await api.call('GET', '/api/v1/computers/legacy-bdns/network-policy');
    t.like(got.body.data, { mode: 'isolated', dns: 'none', block_dns: true });

    const dig = async (cgroup: string, name: string) =>
      (await world.run('dig', ['@127.0.0.53', '+tries=1', '+time=2', name, 'A'], { cgroup, netns: false }))
        .out;
    const asked = dnsmasq.queries().length;
    t.regex(await dig(isolated, 'learned.test'), /status: NXDOMAIN/, 'answered by the proxy itself');
    t.deepEqual(await world.probeResults({ cgroup: isolated }, 'tcp:203.0.113.77:443'), ['EPERM']);
    t.regex(await dig(allowlist, 'unlisted.test'), /status: NXDOMAIN/);
    t.deepEqual(dnsmasq.queries().slice(asked), [], 'nothing reached the upstream');
    t.regex(await dig(allowlist, 'learned.test'), /203\.0\.113\.77/);
    t.deepEqual(dnsmasq.queries().slice(asked), ['A learned.test']);
    t.deepEqual(await world.probeResults({ cgroup: allowlist }, 'tcp:203.0.113.77:443'), ['ok']);
  },
);
