/**
 * The wait for the agent's acknowledgement, and the store operations the
 * agent uses (change stream, snapshot, ackEnforced), with a stand-in agent.
 */
import test from 'ava';
import { channels, keys } from '../../store/keys.js';
import { Store } from '../../store/store.js';
import { type Harness, register, startHarness } from './harness.js';

let h: Harness;
test.before(async () => {
  h = await startHarness({ waitTimeoutMs: 400 });
});
test.after.always(async () => {
  await h?.close();
});

/** A stand-in agent on `node`: follows the change stream and acknowledges every version. */
function fakeAgent(node: string, url: string) {
  const store = new Store({ url });
  let running = true;
  const done = (async () => {
    await store.connect();
    const { streamId, computers } = await store.listComputersOfNode(node);
    for (const c of computers) await store.ackEnforced(c.id, c.version, new Date(), node);
    let from = streamId;
    while (running) {
      const changes = await store.readChanges(node, from, { blockMs: 100 });
      for (const change of changes) {
        from = change.streamId;
        if (change.kind !== 'computer-deleted')
          await store.ackEnforced(change.computerId, change.version, new Date(), node);
      }
    }
  })();
  return {
    stop: async () => {
      running = false;
      await done;
      await store.close();
    },
  };
}

test('PUT waits for the agent and answers 200 enforced', async (t) => {
  await register(h, 'enf-1', { node: 'agent-node' });
  const agent = fakeAgent('agent-node', h.redis.url);
  t.teardown(() => agent.stop());
  const started = Date.now();
  const r = await h.call('PUT', '/api/v1/computers/enf-1/network-policy?wait=5000', {
    body: { mode: 'allowlist', rules: [{ host: 'github.com', port: 443, protocol: 'tcp' }] },
  });
  t.is(r.status, 200);
  t.is(r.body.data.enforcement.state, 'enforced');
  t.is(r.body.data.enforcement.enforced_version, r.body.data.version);
  t.regex(r.body.data.enforcement.enforced_at, /^\d{4}-/);
  t.true(Date.now() - started < 4000, 'woken by the notification, not the timeout');
  const del = await h.call('DELETE', '/api/v1/computers/enf-1/network-policy');
  t.is(del.status, 200);
  t.is(del.body.data.enforcement.state, 'enforced');
  const got = await h.call('GET', '/api/v1/computers/enf-1/network-policy');
  t.is(got.body.data.enforcement.state, 'enforced');
});

test('without an agent, PUT answers 202 pending after the configured wait', async (t) => {
  await register(h, 'enf-2', { node: 'no-agent' });
  const started = Date.now();
  const r = await h.call('PUT', '/api/v1/computers/enf-2/network-policy', { body: { mode: 'isolated' } });
  const took = Date.now() - started;
  t.is(r.status, 202);
  t.is(r.body.data.enforcement.state, 'pending');
  t.true(took >= 350, `waited ${took} ms`);
  t.true(took < 3000, `waited ${took} ms`);
  const quick = Date.now();
  const r0 = await h.call('PUT', '/api/v1/computers/enf-2/network-policy?wait=0', {
    body: { mode: 'unrestricted' },
  });
  t.is(r0.status, 202);
  t.true(Date.now() - quick < 350, '?wait=0 does not wait');
});

test('an acknowledgement never moves back, and one for an older version leaves the state pending', async (t) => {
  await register(h, 'enf-3', { node: 'manual' });
  const r = await h.call('PUT', '/api/v1/computers/enf-3/network-policy?wait=0', {
    body: { mode: 'isolated' },
  });
  const v = r.body.data.version as number;
  t.true(await h.store.ackEnforced('enf-3', v - 1));
  t.is(
    (await h.call('GET', '/api/v1/computers/enf-3/network-policy')).body.data.enforcement.state,
    'pending',
  );
  t.true(await h.store.ackEnforced('enf-3', v));
  t.false(await h.store.ackEnforced('enf-3', v - 1));
  const got = await h.call('GET', '/api/v1/computers/enf-3/network-policy');
  t.like(got.body.data.enforcement, { state: 'enforced', enforced_version: v });
  // An unchanged PUT keeps the version, so it is enforced at once.
  const same = await h.call('PUT', '/api/v1/computers/enf-3/network-policy', { body: { mode: 'isolated' } });
  t.is(same.status, 200);
  t.is(same.body.data.version, v);
  t.false(await h.store.ackEnforced('no-such-computer', 1), 'no ack for an unknown computer');
});

test('a waiting request wakes when the ack comes in while it waits', async (t) => {
  await register(h, 'enf-4', { node: 'late' });
  const pending = h.call('PUT', '/api/v1/computers/enf-4/network-policy?wait=10000', {
    body: { mode: 'isolated' },
  });
  // Bounded: find the change record, then acknowledge it.
  let version = 0;
  for (let i = 0; i < 100 && version === 0; i++) {
    const changes = await h.store.readChanges('late', '0-0', { blockMs: 50 });
    version = changes.find((c) => c.kind === 'policy')?.version ?? 0;
  }
  t.true(version > 0);
  const started = Date.now();
  await h.store.ackEnforced('enf-4', version, new Date(), 'late');
  const r = await pending;
  t.is(r.status, 200);
  t.true(Date.now() - started < 2000);
});

test('a waiting request answers from the notification alone, and still wakes on an older agent\'s "<id> <version>"', async (t) => {
  await register(h, 'enf-5', { node: 'late' });
  const redis = h.store.redis;
  // A store that never polls within the test: only a notification can answer.
  const store = new Store({ url: h.redis.url, waitPollMs: 60_000 });
  await store.connect();
  t.teardown(() => store.close());
  // The notification carries what the answer needs: no key to read (none was written here).
  const first = store.waitEnforced('enf-5', 7, 5000);
  await new Promise((r) => setTimeout(r, 50));
  await redis.publish(channels.enforced, 'enf-5 6 2026-01-01T00:00:00.000Z');
  await redis.publish(channels.enforced, 'enf-5 7 2026-01-01T00:00:01.000Z');
  // A three-word message is an older agent's: it acknowledged only what it enforced.
  t.deepEqual(await first, { version: 7, at: '2026-01-01T00:00:01.000Z', state: 'enforced', reason: '' });
  // A report of another state carries it, and its reason (the rest of the message, spaces and all):
  // any report settles the wait, cgroup_missing too ...
  const missing = store.waitEnforced('enf-5', 7, 5000);
  await new Promise((r) => setTimeout(r, 50));
  await redis.publish(
    channels.enforced,
    'enf-5 7 2026-01-01T00:00:01.500Z cgroup_missing cgroup /sys/fs/cgroup/egressd/x does not exist',
  );
  t.deepEqual(await missing, {
    version: 7,
    at: '2026-01-01T00:00:01.500Z',
    state: 'cgroup_missing',
    reason: 'cgroup /sys/fs/cgroup/egressd/x does not exist',
  });
  // ... unless the caller waits past cgroup_missing (the cgroup is about to appear).
  const past = store.waitEnforced('enf-5', 7, 5000, { pastMissing: true });
  await new Promise((r) => setTimeout(r, 50));
  await redis.publish(channels.enforced, 'enf-5 7 2026-01-01T00:00:01.550Z cgroup_missing');
  await redis.publish(channels.enforced, 'enf-5 7 2026-01-01T00:00:01.600Z cgroup_forbidden');
  t.deepEqual(await past, {
    version: 7,
    at: '2026-01-01T00:00:01.600Z',
    state: 'cgroup_forbidden',
    reason: '',
  });
  // An older agent's message carries no time: the waiter reads the key.
  const second = store.waitEnforced('enf-5', 8, 5000);
  await new Promise((r) => setTimeout(r, 50));
  await redis.hset(keys.enforced('enf-5'), 'version', '8', 'at', '2026-01-01T00:00:02.000Z');
  await redis.publish(channels.enforced, 'enf-5 8');
  t.deepEqual(await second, { version: 8, at: '2026-01-01T00:00:02.000Z', state: 'enforced', reason: '' });
});

test('a PUT whose cgroup is missing answers at once with the state and the reason', async (t) => {
  await register(h, 'enf-6', { node: 'cgroupless' });
  // The agent of node "cgroupless" reports on the policy's version: the cgroup is missing.
  const agent = (async () => {
    for (let i = 0; i < 200; i++) {
      await new Promise((r) => setTimeout(r, 20));
      const changes = await h.store.readChanges('cgroupless', '0-0');
      const change = changes.filter((c) => c.computerId === 'enf-6' && c.kind === 'policy').at(-1);
      if (change) {
        await h.store.ackEnforced(
          'enf-6',
          change.version,
          new Date(),
          'cgroupless',
          'cgroup_missing',
          'cgroup /sys/fs/cgroup/egressd/enf-6 does not exist on node cgroupless',
        );
        return;
      }
    }
  })();
  const started = Date.now();
  const r = await h.call('PUT', '/api/v1/computers/enf-6/network-policy?wait=10000', {
    body: { mode: 'isolated' },
  });
  await agent;
  t.is(r.status, 202);
  t.true(Date.now() - started < 5000, 'not the whole wait');
  t.like(r.body.data.enforcement, {
    state: 'cgroup_missing',
    reason: 'cgroup /sys/fs/cgroup/egressd/enf-6 does not exist on node cgroupless',
    enforced_version: null,
  });
  // A GET says the same; a PUT of the same policy answers at once, without waiting.
  const get = await h.call('GET', '/api/v1/computers/enf-6/network-policy');
  t.like(get.body.data.enforcement, { state: 'cgroup_missing' });
  const again = Date.now();
  const same = await h.call('PUT', '/api/v1/computers/enf-6/network-policy?wait=10000', {
    body: { mode: 'isolated' },
  });
  t.is(same.status, 202);
  t.true(Date.now() - again < 1000);
});

test('node snapshot: every computer of a node with policy and version, and the stream id to follow', async (t) => {
  await register(h, 'snap-1', { node: 'snap' });
  await register(h, 'snap-2', { node: 'snap' });
  await h.call('PUT', '/api/v1/computers/snap-2/network-policy?wait=0', {
    body: { mode: 'denylist', rules: [{ host: '192.0.2.0/24', protocol: 'udp' }] },
  });
  const snap = await h.store.listComputersOfNode('snap');
  t.deepEqual(
    snap.computers.map((c) => [c.id, c.cgroup, c.policy]),
    [
      [
        'snap-1',
        'egressd/snap-1',
        { mode: 'unrestricted', dns: 'all', audit: false, rules: [], rulesJson: '[]' },
      ],
      [
        'snap-2',
        'egressd/snap-2',
        {
          mode: 'denylist',
          dns: 'all',
          audit: false,
          rules: [{ host: '192.0.2.0/24', protocol: 'udp' }],
          rulesJson: JSON.stringify([{ host: '192.0.2.0/24', protocol: 'udp' }]),
        },
      ],
    ],
  );
  const changes = await h.store.readChanges('snap', '0-0');
  t.is(snap.streamId, changes.at(-1)?.streamId ?? 'none');
  t.deepEqual(await h.store.readChanges('snap', snap.streamId), []);
  t.is(await h.store.firstChangeId('snap'), changes[0]?.streamId ?? 'none');
  const empty = await h.store.listComputersOfNode('nobody-here');
  t.deepEqual(empty, { streamId: '0-0', seq: 0, computers: [] });
  t.is(snap.seq, changes.at(-1)?.seq ?? -1, 'the snapshot carries the seq of its last record');
  t.deepEqual(
    changes.map((c) => c.seq),
    changes.map((_, i) => i + 1),
    'records are numbered 1, 2, 3, ... per node',
  );
});

test('version_regressed: shown as not in force; the same policy PUT again gets a new version; the counter only rises', async (t) => {
  await register(h, 'enf-reg', { node: 'manual' });
  const put = await h.call('PUT', '/api/v1/computers/enf-reg/network-policy?wait=0', {
    body: { mode: 'isolated' },
  });
  const v = put.body.data.version as number;
  const reason = `node manual keeps version ${v + 5} of the policy in force and refuses version ${v}`;
  t.true(await h.store.ackEnforced('enf-reg', v, new Date(), 'manual', 'version_regressed', reason));
  const got = await h.call('GET', '/api/v1/computers/enf-reg/network-policy');
  t.deepEqual(
    { ...got.body.data.enforcement, enforced_at: null },
    {
      state: 'version_regressed',
      reason,
      enforced_version: null,
      enforced_at: null,
      revocation: null,
      revoked: null,
    },
  );
  // The counter went back with the store (a failover): the agent raises it to the version it keeps.
  const counter = Number(await h.store.redis.get(keys.version()));
  t.true(await h.store.raiseVersion(counter + 100));
  t.false(await h.store.raiseVersion(counter + 50), 'never lowered');
  t.is(Number(await h.store.redis.get(keys.version())), counter + 100);
  // The very policy stored, PUT again: not "unchanged" (that would keep the refused version).
  const again = await h.call('PUT', '/api/v1/computers/enf-reg/network-policy?wait=0', {
    body: { mode: 'isolated' },
  });
  t.is(again.status, 202);
  t.is(again.body.data.version, counter + 101);
  t.is(again.body.data.enforcement.state, 'pending');
  // Once that version is reported, the same PUT is unchanged again.
  t.true(await h.store.ackEnforced('enf-reg', counter + 101, new Date(), 'manual'));
  const same = await h.call('PUT', '/api/v1/computers/enf-reg/network-policy', {
    body: { mode: 'isolated' },
  });
  t.is(same.status, 200);
  t.is(same.body.data.version, counter + 101);
});
