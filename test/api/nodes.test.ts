/**
 * What the agents say of their nodes (store/nodes.ts): GET /api/v1/nodes
 * (admin) lists each with its kernel, features and the store it follows (or
 * lost); /readyz counts the features' states and the nodes that lost their
 * store without naming nodes; a node whose status ran out is gone.
 */
import test from 'ava';
import { keys } from '../../store/keys.js';
import { type Harness, startHarness } from './harness.js';

let h: Harness;
const LOST = '0123456789abcdef0123456789abcdef';

test.before(async () => {
  h = await startHarness();
  const now = Date.now();
  await h.store.putNodeStatus({
    node: 'n1',
    kernel: '6.12.0',
    version: '1.0.0',
    startedAt: now - 1000,
    seenAt: now,
    features: { revocation: { state: 'on' }, name_check: { state: 'on' } },
    store: { state: 'following', id: LOST },
  });
  await h.store.putNodeStatus({
    node: 'n2',
    kernel: '6.1.0',
    version: '1.0.0',
    startedAt: now - 1000,
    seenAt: now,
    features: {
      revocation: { state: 'unsupported', problem: 'no bpf_sock_destroy and no CONFIG_INET_DIAG_DESTROY' },
      name_check: { state: 'on' },
    },
    store: { state: 'lost', id: LOST, found: '', since: now - 500 },
  });
});

test.after.always(async () => {
  await h?.close();
});

test.serial('the admin lists nodes, their kernels and features; /readyz counts states only', async (t) => {
  const r = await h.call('GET', '/api/v1/nodes');
  t.is(r.status, 200);
  const data = (r.body as { data: { node: string; kernel: string; features: object }[] }).data;
  t.deepEqual(
    data.map((n) => [n.node, n.kernel]),
    [
      ['n1', '6.12.0'],
      ['n2', '6.1.0'],
    ],
  );
  t.like(data[0], { store: { state: 'following', id: LOST } });
  t.like(data[1], {
    store: { state: 'lost', id: LOST, found: null },
    features: {
      revocation: { state: 'unsupported', problem: 'no bpf_sock_destroy and no CONFIG_INET_DIAG_DESTROY' },
    },
  });
  const ready = await h.call('GET', '/readyz', { key: '' });
  t.is(ready.status, 200);
  t.deepEqual(ready.body, {
    status: 'ready',
    nodes: 2,
    features: { revocation: { on: 1, unsupported: 1 }, name_check: { on: 2 } },
    store_lost: 1,
  });
  t.notRegex(ready.text, /6\.1\.0|n1|n2/, 'no node names or kernels without a key');
});

test.serial('a tenant key may not list nodes; a node whose status ran out is gone', async (t) => {
  const created = await h.call('POST', '/api/v1/keys', {
    body: { tenant: 'acme', name: 'acme ci', cgroup_prefix: 'egressd' },
  });
  t.is(created.status, 201, created.text);
  const tenantKey = (created.body as { data: { key: string } }).data.key;
  t.is((await h.call('GET', '/api/v1/nodes', { key: tenantKey })).status, 403);
  await h.store.redis.del(keys.nodeStatus('n1'));
  const r = await h.call('GET', '/api/v1/nodes');
  t.deepEqual(
    (r.body as { data: { node: string }[] }).data.map((n) => n.node),
    ['n2'],
  );
});
