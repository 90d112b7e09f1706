/**
 * The store's identity through the API (api/routes/store.ts): GET
 * /api/v1/store shows it and the nodes that lost their store; POST
 * /api/v1/store/accept records the lost ids the nodes report (or those
 * named) as replaced by this store, admin only, and only ever adds.
 */
import test from 'ava';
import { keys } from '../../store/keys.js';
import { type Harness, startHarness } from './harness.js';

let h: Harness;
const LOST_1 = '11111111111111111111111111111111';
const LOST_2 = '22222222222222222222222222222222';

test.before(async () => {
  h = await startHarness();
});

test.after.always(async () => {
  await h?.close();
});

async function nodeSays(node: string, store: { state: 'following' | 'lost'; id: string; found?: string }) {
  const now = Date.now();
  await h.store.putNodeStatus({
    node,
    kernel: '6.12.0',
    version: '1.0.0',
    startedAt: now,
    seenAt: now,
    features: {},
    store: { ...store, since: now },
  });
}

test.serial('no identity yet; nothing to accept while no node reports a lost store', async (t) => {
  await h.store.redis.del(keys.storeIdentity());
  const r = await h.call('GET', '/api/v1/store');
  t.is(r.status, 200);
  t.deepEqual(r.body.data, { id: null, created_at: null, replaces: [], nodes_lost: [] });
  const none = await h.call('POST', '/api/v1/store/accept');
  t.is(none.status, 409);
  t.is(none.body.error.code, 'nothing_to_accept');
});

test.serial('accept records the lost ids the nodes report; repeating it adds nothing', async (t) => {
  const made = await h.store.ensureStoreIdentity();
  await nodeSays('a', { state: 'lost', id: LOST_1, found: made.id });
  await nodeSays('b', { state: 'lost', id: LOST_1, found: '' });
  await nodeSays('c', { state: 'following', id: made.id });
  const before = await h.call('GET', '/api/v1/store');
  t.is(before.body.data.id, made.id);
  t.like(before.body.data.nodes_lost, [
    { node: 'a', lost_id: LOST_1, found_id: made.id },
    { node: 'b', lost_id: LOST_1, found_id: null },
  ]);
  const r = await h.call('POST', '/api/v1/store/accept');
  t.is(r.status, 200, r.text);
  t.like(r.body.data, { id: made.id, replaces: [LOST_1], accepted: [LOST_1] });
  t.is((await h.call('POST', '/api/v1/store/accept', { body: {} })).body.data.replaces.length, 1);
  // Named explicitly: a node that is down now.
  const named = await h.call('POST', '/api/v1/store/accept', { body: { lost: [LOST_2] } });
  t.is(named.status, 200, named.text);
  t.deepEqual(named.body.data.replaces, [LOST_1, LOST_2]);
  t.deepEqual((await h.store.storeIdentity())?.replaces, [LOST_1, LOST_2]);
});

test.serial('a body that names no valid ids is refused; a tenant key may do neither', async (t) => {
  for (const body of [{ lost: [] }, { lost: ['nope'] }, { lost: 'x' }, { other: 1 }, []]) {
    const r = await h.call('POST', '/api/v1/store/accept', { body });
    t.is(r.status, 400, JSON.stringify(body));
  }
  const created = await h.call('POST', '/api/v1/keys', { body: { tenant: 'acme', cgroup_prefix: 'x' } });
  t.is(created.status, 201, created.text);
  const key = created.body.data.key as string;
  t.is((await h.call('GET', '/api/v1/store', { key })).status, 403);
  t.is((await h.call('POST', '/api/v1/store/accept', { key })).status, 403);
});
