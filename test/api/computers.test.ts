import test from 'ava';
import { type Harness, startHarness } from './harness.js';

let h: Harness;
test.before(async () => {
  h = await startHarness();
});
test.after.always(async () => {
  await h?.close();
});

test('PUT /computers/{id} creates (201) then updates (200); GET returns it', async (t) => {
  const created = await h.call('PUT', '/api/v1/computers/c-1', { body: { cgroup: '/egressd/c-1/' } });
  t.is(created.status, 201);
  t.is(created.headers.get('location'), '/api/v1/computers/c-1');
  t.like(created.body.data, { id: 'c-1', cgroup: 'egressd/c-1', node: 'node-a', tenant: null });
  const updated = await h.call('PUT', '/api/v1/computers/c-1', {
    body: { cgroup: 'egressd/c-1b', tenant: 'acme' },
  });
  t.is(updated.status, 200);
  t.like(updated.body.data, { cgroup: 'egressd/c-1b', node: 'node-a', tenant: 'acme' });
  t.is(updated.body.data.created_at, created.body.data.created_at);
  const got = await h.call('GET', '/api/v1/computers/c-1');
  t.deepEqual(got.body.data, updated.body.data);
  const kept = await h.call('PUT', '/api/v1/computers/c-1', { body: { cgroup: 'egressd/c-1b' } });
  t.is(kept.body.data.tenant, 'acme', 'tenant absent keeps the tenant');
  const cleared = await h.call('PUT', '/api/v1/computers/c-1', {
    body: { cgroup: 'egressd/c-1b', tenant: null },
  });
  t.is(cleared.body.data.tenant, null, 'tenant null sets none');
  t.deepEqual((await h.store.redis.zrange('egressd:tenant:acme:computers', 0, -1)).includes('c-1'), false);
});

test('moving a computer bumps its version and writes change records to both nodes', async (t) => {
  await h.call('PUT', '/api/v1/computers/mover', { body: { cgroup: 'm', node: 'n-old' } });
  const before = (await h.call('GET', '/api/v1/computers/mover/network-policy')).body.data.version;
  await h.call('PUT', '/api/v1/computers/mover', { body: { cgroup: 'm', node: 'n-new' } });
  const after = (await h.call('GET', '/api/v1/computers/mover/network-policy')).body.data.version;
  t.true(after > before);
  const oldChanges = await h.store.readChanges('n-old', '0-0');
  const newChanges = await h.store.readChanges('n-new', '0-0');
  t.deepEqual(
    oldChanges.map((c) => [c.computerId, c.kind]),
    [
      ['mover', 'computer'],
      ['mover', 'computer-deleted'],
    ],
  );
  t.deepEqual(
    newChanges.map((c) => [c.computerId, c.kind, c.version, c.cgroup]),
    [['mover', 'computer', after, 'm']],
  );
  t.deepEqual(
    (await h.store.listComputersOfNode('n-old')).computers.map((c) => c.id),
    [],
  );
});

test('a new cgroup on the same node: the old one is detached, the new one attached, with a new version', async (t) => {
  await h.call('PUT', '/api/v1/computers/recg', { body: { cgroup: 'old/path', node: 'n-recg' } });
  const r = await h.call('PUT', '/api/v1/computers/recg', { body: { cgroup: 'new/path' } });
  t.is(r.status, 200);
  const changes = await h.store.readChanges('n-recg', '0-0');
  t.deepEqual(
    changes.map((c) => [c.kind, c.cgroup]),
    [
      ['computer', 'old/path'],
      ['computer-deleted', 'old/path'],
      ['computer', 'new/path'],
    ],
  );
  t.is(changes[1]?.version, changes[2]?.version);
  t.true((changes[2]?.version ?? 0) > (changes[0]?.version ?? 0));
  const other = await h.call('PUT', '/api/v1/computers/recg-2', {
    body: { cgroup: 'old/path', node: 'n-recg' },
  });
  t.is(other.status, 201, 'the old cgroup is free again');
});

test('a cgroup belongs to one computer per node: 409', async (t) => {
  await h.call('PUT', '/api/v1/computers/own-1', { body: { cgroup: 'shared', node: 'n-cg' } });
  const r = await h.call('PUT', '/api/v1/computers/own-2', { body: { cgroup: 'shared', node: 'n-cg' } });
  t.is(r.status, 409);
  t.is(r.body.error.code, 'cgroup_in_use');
  const other = await h.call('PUT', '/api/v1/computers/own-2', { body: { cgroup: 'shared', node: 'n-cg2' } });
  t.is(other.status, 201);
  t.is((await h.call('DELETE', '/api/v1/computers/own-1')).status, 204);
  const now = await h.call('PUT', '/api/v1/computers/own-3', { body: { cgroup: 'shared', node: 'n-cg' } });
  t.is(now.status, 201, 'the cgroup is free again once its computer is gone');
});

test('without a default node, node is required', async (t) => {
  const bare = await startHarness({ defaultNode: '' });
  t.teardown(() => bare.close());
  const r = await bare.call('PUT', '/api/v1/computers/nn', { body: { cgroup: 'x' } });
  t.is(r.status, 400);
  t.is(r.body.error.code, 'node_required');
  t.regex(r.body.error.message, /^node required/);
  const ok = await bare.call('PUT', '/api/v1/computers/nn', { body: { cgroup: 'x', node: 'h1' } });
  t.is(ok.status, 201);
  const keep = await bare.call('PUT', '/api/v1/computers/nn', { body: { cgroup: 'y' } });
  t.is(keep.status, 200);
  t.is(keep.body.data.node, 'h1', 'an update without node keeps the node');
});

test('computer body validation', async (t) => {
  const cases: Array<[unknown, RegExp]> = [
    [{}, /^cgroup: must be a string/],
    [{ cgroup: '/' }, /^cgroup: must name a cgroup below the root/],
    [{ cgroup: 'a/../b' }, /^cgroup: must not contain empty, "\." or "\.\." segments/],
    [{ cgroup: 'a//b' }, /^cgroup: must not contain empty/],
    [{ cgroup: 'a', node: 'bad node' }, /^node: /],
    [{ cgroup: 'a', tenant: '-x' }, /^tenant: /],
    [{ cgroup: 'a', colour: 'red' }, /^colour: unknown field/],
  ];
  for (const [body, message] of cases) {
    const r = await h.call('PUT', '/api/v1/computers/val', { body });
    t.is(r.status, 400, JSON.stringify(body));
    t.regex(r.body.error.message, message, JSON.stringify(body));
  }
  t.is((await h.call('GET', '/api/v1/computers/val')).status, 404);
});

test('DELETE /computers/{id} removes it and its policy', async (t) => {
  await h.call('PUT', '/api/v1/computers/gone', { body: { cgroup: 'gone', node: 'n-del' } });
  await h.call('PUT', '/api/v1/computers/gone/network-policy?wait=0', { body: { mode: 'isolated' } });
  const r = await h.call('DELETE', '/api/v1/computers/gone');
  t.is(r.status, 204);
  t.is((await h.call('GET', '/api/v1/computers/gone')).status, 404);
  t.is((await h.call('GET', '/api/v1/computers/gone/network-policy')).status, 404);
  t.is((await h.call('DELETE', '/api/v1/computers/gone')).status, 404);
  t.deepEqual(await h.store.redis.keys('egressd:computer:gone*'), []);
  const changes = await h.store.readChanges('n-del', '0-0');
  t.deepEqual(
    changes.map((c) => c.kind),
    ['computer', 'policy', 'computer-deleted'],
  );
  // Re-created: versions never go back.
  const last = changes[2]?.version ?? 0;
  await h.call('PUT', '/api/v1/computers/gone', { body: { cgroup: 'gone', node: 'n-del' } });
  const p = await h.call('GET', '/api/v1/computers/gone/network-policy');
  t.true(p.body.data.version > last);
  t.is(p.body.data.mode, 'unrestricted');
});

test('GET /computers pages by id and filters by node', async (t) => {
  const list = await startHarness();
  t.teardown(() => list.close());
  for (let i = 0; i < 7; i++) {
    await list.call('PUT', `/api/v1/computers/p-${i}`, {
      body: { cgroup: `p/${i}`, node: i % 2 ? 'odd' : 'even' },
    });
  }
  const ids: string[] = [];
  let cursor: string | null = null;
  for (let pages = 0; pages < 10; pages++) {
    const q: string = cursor ? `&cursor=${cursor}` : '';
    const r = await list.call('GET', `/api/v1/computers?limit=3${q}`);
    t.is(r.status, 200);
    t.true(r.body.data.length <= 3);
    ids.push(...r.body.data.map((c: { id: string }) => c.id));
    cursor = r.body.next_cursor;
    if (!cursor) break;
  }
  t.deepEqual(ids, ['p-0', 'p-1', 'p-2', 'p-3', 'p-4', 'p-5', 'p-6']);
  const odd = await list.call('GET', '/api/v1/computers?node=odd');
  t.deepEqual(
    odd.body.data.map((c: { id: string }) => c.id),
    ['p-1', 'p-3', 'p-5'],
  );
  t.is(odd.body.next_cursor, null);
  t.is((await list.call('GET', '/api/v1/computers?limit=0')).status, 400);
  t.is((await list.call('GET', '/api/v1/computers?limit=1001')).status, 400);
  t.is((await list.call('GET', '/api/v1/computers?node=a%20b')).status, 400);
  t.is((await list.call('GET', '/api/v1/computers?cursor=-x')).status, 400);
});

test("GET /computers: each computer with its policy in brief and the agent's report, reason included", async (t) => {
  const list = await startHarness();
  t.teardown(() => list.close());
  await list.call('PUT', '/api/v1/computers/st-ok', { body: { cgroup: 'egressd/st-ok', node: 'st' } });
  await list.call('PUT', '/api/v1/computers/st-missing', {
    body: { cgroup: 'egressd/st-missing', node: 'st' },
  });
  await list.call('PUT', '/api/v1/computers/st-missing/network-policy?wait=0', {
    body: { mode: 'isolated' },
  });
  const ok = (await list.call('GET', '/api/v1/computers/st-ok/network-policy')).body.data.version;
  const missing = (await list.call('GET', '/api/v1/computers/st-missing/network-policy')).body.data.version;
  await list.store.ackEnforced('st-ok', ok, new Date('2026-01-01T00:00:00Z'), 'st');
  await list.store.ackEnforced(
    'st-missing',
    missing,
    new Date(),
    'st',
    'cgroup_missing',
    'cgroup /sys/fs/cgroup/egressd/st-missing does not exist on node st',
  );
  const r = await list.call('GET', '/api/v1/computers?node=st');
  t.is(r.status, 200);
  t.deepEqual(
    r.body.data.map((c: { id: string; policy: unknown }) => [c.id, c.policy]),
    [
      [
        'st-missing',
        {
          mode: 'isolated',
          block_dns: false,
          audit: false,
          version: missing,
          enforcement: {
            state: 'cgroup_missing',
            reason: 'cgroup /sys/fs/cgroup/egressd/st-missing does not exist on node st',
            enforced_version: null,
            enforced_at: null,
            revocation: null,
            revoked: null,
          },
        },
      ],
      [
        'st-ok',
        {
          mode: 'unrestricted',
          block_dns: false,
          audit: false,
          version: ok,
          enforcement: {
            state: 'enforced',
            reason: null,
            enforced_version: ok,
            enforced_at: '2026-01-01T00:00:00.000Z',
            revocation: null,
            revoked: null,
          },
        },
      ],
    ],
  );
});

test('healthz, readyz, metrics', async (t) => {
  const health = await h.call('GET', '/healthz', { key: '' });
  t.is(health.status, 200);
  t.deepEqual(health.body, { status: 'ok' });
  const ready = await h.call('GET', '/readyz', { key: '' });
  t.deepEqual(
    ready.body,
    { status: 'ready', nodes: 0, store_lost: 0, features: {} },
    'no agent has written its status',
  );
  const metrics = await h.call('GET', '/metrics');
  t.is(metrics.status, 200);
  t.regex(metrics.headers.get('content-type') ?? '', /^text\/plain/);
  t.regex(metrics.text, /egressd_api_requests_total\{method="GET",route="\/healthz",status="200"\} 1/);
  t.regex(metrics.text, /egressd_api_request_duration_seconds_bucket/);
  await h.call('PUT', '/api/v1/computers/metrics-1', { body: { cgroup: 'metrics-1' } });
  await h.call('PUT', '/api/v1/computers/metrics-1/network-policy?wait=0', { body: { mode: 'isolated' } });
  const after = await h.call('GET', '/metrics');
  t.regex(after.text, /egressd_api_policy_changes_total\{result="pending"\} [1-9]/);
  t.regex(after.text, /egressd_api_enforcement_wait_seconds_count\{result="pending"\} [1-9]/);
});

test('sandbox roots, key prefixes and nesting: a key governs only cgroups below its prefix, computers never nest', async (t) => {
  const h = await startHarness({ cgroupRoots: ['sbx'] });
  t.teardown(() => h.close());
  // Admin: strictly below a root.
  for (const cgroup of ['sbx', 'other/x', 'system.slice']) {
    const r = await h.call('PUT', '/api/v1/computers/root-bad', { body: { cgroup } });
    t.is(r.status, 400, cgroup);
    t.is(r.body.error.code, 'cgroup_outside_roots');
    t.regex(r.body.error.message, /below a sandbox root .*"sbx"/);
  }
  t.is((await h.call('PUT', '/api/v1/computers/a1', { body: { cgroup: 'sbx/a/one' } })).status, 201);
  // Nesting: an ancestor, a descendant; a sibling is fine.
  const ancestor = await h.call('PUT', '/api/v1/computers/a2', { body: { cgroup: 'sbx/a' } });
  t.is(ancestor.status, 409);
  t.is(ancestor.body.error.code, 'cgroup_nested');
  const descendant = await h.call('PUT', '/api/v1/computers/a3', { body: { cgroup: 'sbx/a/one/child' } });
  t.is(descendant.status, 409);
  t.is(descendant.body.error.code, 'cgroup_nested');
  t.is((await h.call('PUT', '/api/v1/computers/a4', { body: { cgroup: 'sbx/a/one-more' } })).status, 201);
  // Keys: the default prefix is <root>/<tenant>; a prefix outside the roots is refused.
  const made = await h.call('POST', '/api/v1/keys', { body: { tenant: 'acme' } });
  t.is(made.status, 201);
  t.is(made.body.data.cgroup_prefix, 'sbx/acme');
  const badPrefix = await h.call('POST', '/api/v1/keys', {
    body: { tenant: 'acme', cgroup_prefix: 'elsewhere' },
  });
  t.is(badPrefix.status, 400);
  t.is(badPrefix.body.error.code, 'cgroup_outside_roots');
  const key = made.body.data.key;
  // A tenant: only below its prefix; not another tenant's next path, not the prefix itself.
  for (const cgroup of ['sbx/globex/next', 'sbx/acme', 'sbx', 'system.slice/egressd.service', 'sbx/a']) {
    const r = await h.call('PUT', '/api/v1/computers/acme~t-bad', { body: { cgroup }, key });
    t.is(r.status, 403, cgroup);
    t.is(r.body.error.code, 'cgroup_outside_prefix');
    t.regex(r.body.error.message, /below "sbx\/acme"/);
  }
  t.is(
    (await h.call('PUT', '/api/v1/computers/acme~t-ok', { body: { cgroup: 'sbx/acme/box' }, key })).status,
    201,
  );
  // Another tenant's computer cannot be wrapped by the admin or nested into: the message names no other computer for a tenant.
  t.is(
    (await h.call('PUT', '/api/v1/computers/acme~t-in', { body: { cgroup: 'sbx/acme/box/in' }, key })).status,
    409,
  );
  const listed = await h.call('GET', '/api/v1/keys');
  t.is(listed.body.data.find((k: { tenant: string }) => k.tenant === 'acme')?.cgroup_prefix, 'sbx/acme');
  // Nothing was stored by the refusals.
  for (const id of ['root-bad', 'a2', 'a3', 'acme~t-bad', 'acme~t-in']) {
    t.is((await h.call('GET', `/api/v1/computers/${id}`)).status, 404, id);
  }
});

test('DELETE /computers/{id} takes its deny events and learned names along: the next computer of the id starts empty', async (t) => {
  const tenantKey = async (tenant: string) =>
    (await h.call('POST', '/api/v1/keys', { body: { tenant, cgroup_prefix: 'reuse' } })).body.data
      .key as string;
  const keyA = await tenantKey('reuse-a');
  const keyB = await tenantKey('reuse-b');
  const id = 'reuse-a~reused';
  const policy = `/api/v1/computers/${id}/network-policy`;
  const event = { computer: id, at: new Date().toISOString(), pid: 7, comm: 'curl', family: 'ipv4' };
  const learned = [{ name: 'secret.example', address: '192.0.2.77', expiresAt: Date.now() + 60_000 }];
  t.is(
    (await h.call('PUT', `/api/v1/computers/${id}`, { key: keyA, body: { cgroup: 'reuse/a' } })).status,
    201,
  );
  await h.store.appendEvents(id, [
    {
      ...event,
      protocol: 'tcp',
      address: '192.0.2.77',
      port: 443,
      hostname: 'secret.example',
      reason: 'rule',
    },
  ]);
  await h.store.putLearned(id, learned);
  t.is((await h.call('GET', `${policy}/events`, { key: keyA })).body.data.length, 1);
  t.is((await h.call('GET', `${policy}/learned`, { key: keyA })).body.data.length, 1);

  t.is((await h.call('DELETE', `/api/v1/computers/${id}`, { key: keyA })).status, 204);
  t.is(await h.store.redis.exists(`egressd:computer:${id}:events`, `egressd:computer:${id}:learned`), 0);
  // The agent flushes what it buffered a little later: that must not bring them back.
  await h.store.appendEvents(id, [{ ...event, port: 80 }]);
  await h.store.putLearned(id, learned);
  t.is(await h.store.redis.exists(`egressd:computer:${id}:events`, `egressd:computer:${id}:learned`), 0);

  t.is(
    (await h.call('PUT', `/api/v1/computers/${id}`, { key: keyA, body: { cgroup: 'reuse/b' } })).status,
    201,
  );
  t.deepEqual((await h.call('GET', `${policy}/events`, { key: keyA })).body.data, []);
  t.deepEqual((await h.call('GET', `${policy}/learned`, { key: keyA })).body.data, []);
  // Another tenant cannot take the id at all (it is in reuse-a's namespace).
  t.is(
    (await h.call('PUT', `/api/v1/computers/${id}`, { key: keyB, body: { cgroup: 'reuse/c' } })).body.error
      .code,
    'id_outside_namespace',
  );
  // Leftovers of an older build (which did not delete them) do not pass to a new computer either.
  await h.store.redis.xadd('egressd:computer:leftover:events', '*', 'event', JSON.stringify(event));
  await h.store.redis.hset(
    'egressd:computer:leftover:learned',
    'old.example 192.0.2.78',
    Date.now() + 60_000,
  );
  t.is((await h.call('PUT', '/api/v1/computers/leftover', { body: { cgroup: 'leftover' } })).status, 201);
  t.deepEqual((await h.call('GET', '/api/v1/computers/leftover/network-policy/events')).body.data, []);
  t.deepEqual((await h.call('GET', '/api/v1/computers/leftover/network-policy/learned')).body.data, []);
});

test('ids are scoped per tenant: what a tenant is told about an id outside its namespace never depends on whether it exists', async (t) => {
  const key = async (tenant: string) =>
    (await h.call('POST', '/api/v1/keys', { body: { tenant, cgroup_prefix: 'ns' } })).body.data.key as string;
  const acme = await key('acme-ns');
  const globex = await key('globex-ns');
  t.is(
    (await h.call('PUT', '/api/v1/computers/globex-ns~box', { key: globex, body: { cgroup: 'ns/g1' } }))
      .status,
    201,
  );
  t.is(
    (await h.call('PUT', '/api/v1/computers/plain-taken', { body: { cgroup: 'ns/p1', tenant: 'globex-ns' } }))
      .status,
    201,
  );
  // Taken by another tenant, untenanted, or free: the same answer, byte for byte.
  const answers = [];
  for (const id of ['globex-ns~box', 'globex-ns~free', 'plain-taken', 'plain-free']) {
    const r = await h.call('PUT', `/api/v1/computers/${id}`, { key: acme, body: { cgroup: 'ns/a1' } });
    answers.push({ status: r.status, body: r.text.replace(id, 'ID') });
  }
  t.is(answers[0]?.status, 400);
  t.regex(answers[0]?.body ?? '', /id_outside_namespace.*begin with \\"acme-ns~\\"/);
  for (const a of answers) t.deepEqual(a, answers[0]);
  // In its own namespace it registers; the admin cannot give such an id to another tenant.
  t.is(
    (await h.call('PUT', '/api/v1/computers/acme-ns~box', { key: acme, body: { cgroup: 'ns/a1' } })).status,
    201,
  );
  const wrong = await h.call('PUT', '/api/v1/computers/acme-ns~other', {
    body: { cgroup: 'ns/a2', tenant: 'globex-ns' },
  });
  t.is(wrong.status, 400);
  const byAdmin = await h.call('PUT', '/api/v1/computers/acme-ns~made', { body: { cgroup: 'ns/a3' } });
  t.is(byAdmin.body.data.tenant, 'acme-ns');
  // A malformed id is refused the same way for everyone.
  t.is(
    (await h.call('PUT', '/api/v1/computers/acme-ns~~x', { key: acme, body: { cgroup: 'ns/a4' } })).status,
    400,
  );
});

test('cgroup paths: relative or as /proc/PID/cgroup shows them; a file-system path is refused with what to send', async (t) => {
  const h = await startHarness({ cgroupRoots: ['sbx'] });
  t.teardown(() => h.close());
  const put = (id: string, cgroup: unknown, key?: string) =>
    h.call('PUT', `/api/v1/computers/${id}`, { body: { cgroup }, ...(key ? { key } : {}) });
  // Accepted: relative, and /proc/PID/cgroup style (a leading "/", trailing ones dropped).
  const relative = await put('p-rel', 'sbx/rel');
  t.is(relative.status, 201);
  t.is(relative.body.data.cgroup, 'sbx/rel');
  const procStyle = await put('p-proc', '/sbx/proc/');
  t.is(procStyle.status, 201);
  t.is(procStyle.body.data.cgroup, 'sbx/proc');
  // The same cgroup written another way is the same cgroup.
  const again = await put('p-again', '/sbx/rel');
  t.is(again.status, 409);
  t.is(again.body.error.code, 'cgroup_in_use');
  // A path in the file system: 400 cgroup_not_relative, naming the relative path where it can tell.
  const mounted = await put('p-abs', '/sys/fs/cgroup/unified/sbx/x');
  t.is(mounted.status, 400);
  t.is(mounted.body.error.code, 'cgroup_not_relative');
  t.regex(mounted.body.error.message, /"sbx\/x" if cgroup2 is mounted at \/sys\/fs\/cgroup\/unified/);
  const elsewhere = await put('p-abs2', '/sys/fs/cgroup/system.slice/x');
  t.is(elsewhere.status, 400);
  t.is(elsewhere.body.error.code, 'cgroup_not_relative');
  t.regex(elsewhere.body.error.message, /relative to the cgroup2 mount, for example/);
  // Not below a root, and nothing suggests a file-system path: the roots' answer.
  const outside = await put('p-out', '/other/x');
  t.is(outside.status, 400);
  t.is(outside.body.error.code, 'cgroup_outside_roots');
  // Bad segments are refused as before.
  for (const cgroup of ['sbx/../etc', 'sbx//x', '/', '', 'sbx/./x']) {
    const r = await put('p-bad', cgroup);
    t.is(r.status, 400, cgroup);
    t.is(r.body.error.code, 'invalid_request', cgroup);
  }
  // A tenant key: the same, against its prefix.
  const key = (await h.call('POST', '/api/v1/keys', { body: { tenant: 'acme' } })).body.data.key;
  const tenantAbs = await put('acme~abs', '/sys/fs/cgroup/sbx/acme/box', key);
  t.is(tenantAbs.status, 400);
  t.is(tenantAbs.body.error.code, 'cgroup_not_relative');
  t.regex(tenantAbs.body.error.message, /"sbx\/acme\/box" if cgroup2 is mounted at \/sys\/fs\/cgroup\)/);
  t.is((await put('acme~proc', '/sbx/acme/box', key)).status, 201);
  for (const id of ['p-again', 'p-abs', 'p-abs2', 'p-out', 'p-bad', 'acme~abs']) {
    t.is((await h.call('GET', `/api/v1/computers/${id}`)).status, 404, id);
  }
});

test("GET /api/v1/service: the default node and where the key's computers may live", async (t) => {
  const h = await startHarness({ cgroupRoots: ['sbx', 'more'], defaultNode: 'agent-node' });
  t.teardown(() => h.close());
  const admin = await h.call('GET', '/api/v1/service');
  t.is(admin.status, 200);
  t.deepEqual(admin.body.data, { default_node: 'agent-node', cgroup_bases: ['sbx', 'more'], tenant: null });
  const key = (await h.call('POST', '/api/v1/keys', { body: { tenant: 'acme' } })).body.data.key;
  const tenant = await h.call('GET', '/api/v1/service', { key });
  t.deepEqual(tenant.body.data, { default_node: 'agent-node', cgroup_bases: ['sbx/acme'], tenant: 'acme' });
  t.is((await h.call('GET', '/api/v1/service', { key: '' })).status, 401);
  const none = await startHarness({ defaultNode: '' });
  t.teardown(() => none.close());
  t.is((await none.call('GET', '/api/v1/service')).body.data.default_node, null);
});

test('dns_upstream: accepted forms are stored as address:port, echoed, kept when absent, removed by null', async (t) => {
  const accepted: Array<[string, string]> = [
    ['10.88.0.1', '10.88.0.1:53'],
    ['10.88.0.1:5353', '10.88.0.1:5353'],
    [' 127.0.0.53 ', '127.0.0.53:53'],
    ['[fd00::1]:53', '[fd00::1]:53'],
    ['[FD00:0::0:1]', '[fd00::1]:53'],
    ['fd00::1', '[fd00::1]:53'],
  ];
  for (const [given, stored] of accepted) {
    const r = await h.call('PUT', '/api/v1/computers/up-1', {
      body: { cgroup: 'egressd/up-1', dns_upstream: given },
    });
    t.true(r.status === 200 || r.status === 201, given);
    t.is(r.body.data.dns_upstream, stored, given);
    t.is((await h.call('GET', '/api/v1/computers/up-1')).body.data.dns_upstream, stored, given);
  }
  const kept = await h.call('PUT', '/api/v1/computers/up-1', { body: { cgroup: 'egressd/up-1' } });
  t.is(kept.body.data.dns_upstream, '[fd00::1]:53', 'absent keeps it');
  const listed = await h.call('GET', '/api/v1/computers');
  t.is(listed.body.data.find((c: { id: string }) => c.id === 'up-1').dns_upstream, '[fd00::1]:53');
  const removed = await h.call('PUT', '/api/v1/computers/up-1', {
    body: { cgroup: 'egressd/up-1', dns_upstream: null },
  });
  t.is(removed.body.data.dns_upstream, null, 'null removes it');
  t.is((await h.call('GET', '/api/v1/computers/up-1')).body.data.dns_upstream, null);
  t.is(await h.store.redis.hget('egressd:computer:up-1', 'dns_upstream'), null);
  const fresh = await h.call('PUT', '/api/v1/computers/up-2', { body: { cgroup: 'egressd/up-2' } });
  t.is(fresh.body.data.dns_upstream, null, 'none for a new computer');
});

test('dns_upstream: refused forms get a 400 that says what to send', async (t) => {
  const refused: unknown[] = [
    'dns.example.com',
    'localhost:53',
    '10.88.0.1:0',
    '10.88.0.1:65536',
    '10.88.1',
    '010.88.0.1',
    '10.88.0.256',
    '[10.88.0.1]:53',
    'fd00::1:53:',
    '[fd00::1]:',
    '0.0.0.0',
    '[::]:53',
    '224.0.0.251:5353',
    'fe80::1%eth0',
    '',
    53,
    ['10.88.0.1'],
  ];
  for (const dns_upstream of refused) {
    const r = await h.call('PUT', '/api/v1/computers/up-bad', {
      body: { cgroup: 'egressd/up-bad', dns_upstream },
    });
    t.is(r.status, 400, JSON.stringify(dns_upstream));
    t.is(r.body.error.code, 'invalid_request');
    t.regex(
      r.body.error.message,
      /^dns_upstream: must be the IP address of a resolver .*"10\.88\.0\.1:5353"/,
    );
  }
  t.is((await h.call('GET', '/api/v1/computers/up-bad')).status, 404);
});

test('dns_upstream: a change of it alone is no new version, but a change record the agent reads', async (t) => {
  await h.call('PUT', '/api/v1/computers/up-3', { body: { cgroup: 'u3', node: 'n-up' } });
  const version = (await h.call('GET', '/api/v1/computers/up-3/network-policy')).body.data.version;
  const records = async () => (await h.store.readChanges('n-up', '0-0')).map((c) => [c.kind, c.version]);
  t.deepEqual(await records(), [['computer', version]]);
  await h.call('PUT', '/api/v1/computers/up-3', { body: { cgroup: 'u3', dns_upstream: '10.88.0.1' } });
  t.is((await h.call('GET', '/api/v1/computers/up-3/network-policy')).body.data.version, version);
  t.deepEqual(await records(), [
    ['computer', version],
    ['computer', version],
  ]);
  // The same again: unchanged, no record.
  const same = await h.call('PUT', '/api/v1/computers/up-3', {
    body: { cgroup: 'u3', dns_upstream: '10.88.0.1:53' },
  });
  t.is(same.status, 200);
  t.is((await records()).length, 2);
  const snapshot = await h.store.listComputersOfNode('n-up');
  t.is(snapshot.computers.find((c) => c.id === 'up-3')?.dnsUpstream, '10.88.0.1:53');
  t.is((await h.store.getComputer('up-3'))?.dnsUpstream, '10.88.0.1:53');
  await h.call('PUT', '/api/v1/computers/up-3', { body: { cgroup: 'u3', dns_upstream: null } });
  t.is((await records()).length, 3);
  t.is((await h.store.listComputersOfNode('n-up')).computers[0]?.dnsUpstream, null);
});
