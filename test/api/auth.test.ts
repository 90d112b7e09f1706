import test from 'ava';
import { type Harness, register, startHarness } from './harness.js';

let h: Harness;
test.before(async () => {
  h = await startHarness();
});
test.after.always(async () => {
  await h?.close();
});

async function tenantKey(tenant: string): Promise<{ id: string; key: string }> {
  // Prefix "egressd" (below the harness's root ''): these tests are about keys, not prefixes.
  const r = await h.call('POST', '/api/v1/keys', {
    body: { tenant, name: `${tenant} ci`, cgroup_prefix: 'egressd' },
  });
  if (r.status !== 201) throw new Error(`key: ${r.status} ${r.text}`);
  return r.body.data;
}

test('missing, malformed and unknown keys are 401', async (t) => {
  const headerCases: Record<string, string>[] = [
    {},
    { authorization: 'Basic abc' },
    { authorization: 'Bearer wrong' },
  ];
  for (const headers of headerCases) {
    const r = await h.call('GET', '/api/v1/computers', { key: '', headers });
    t.is(r.status, 401, JSON.stringify(headers));
    t.is(r.body.error.code, 'unauthorized');
  }
  const forged = `egk_${'0'.repeat(16)}_${'A'.repeat(43)}`;
  t.is((await h.call('GET', '/api/v1/computers', { key: forged })).status, 401);
  t.is((await h.call('GET', '/api/v1/computers/x/network-policy', { key: '' })).status, 401);
});

test('/metrics needs the admin key (401 without, 403 for a tenant key); health, readiness and OpenAPI stay open', async (t) => {
  await register(h, 'metrics-secret', { tenant: 't-metrics-other' });
  const none = await h.call('GET', '/metrics', { key: '' });
  t.is(none.status, 401);
  t.is(none.body.error.code, 'unauthorized');
  t.false(none.text.includes('metrics-secret'));
  const { key } = await tenantKey('t-metrics');
  const tenant = await h.call('GET', '/metrics', { key });
  t.is(tenant.status, 403);
  t.is(tenant.body.error.code, 'forbidden');
  t.regex(tenant.body.error.message, /admin key/);
  const admin = await h.call('GET', '/metrics');
  t.is(admin.status, 200);
  t.regex(admin.text, /egressd_api_requests_total\{method="GET",route="\/metrics",status="401"\} 1/);
  for (const open of ['/healthz', '/readyz', '/api/v1/openapi.json']) {
    t.is((await h.call('GET', open, { key: '' })).status, 200, open);
  }
});

test('keys: created once, stored only as a hash, listed without secrets, revoked', async (t) => {
  const { id, key } = await tenantKey('t-keys');
  t.regex(key, /^egk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$/);
  const stored = await h.store.redis.hgetall(`egressd:apikey:${id}`);
  t.false(JSON.stringify(stored).includes(key.slice(21)), 'the secret is not stored');
  t.regex(stored['hash'] ?? '', /^[0-9a-f]{64}$/);
  const list = await h.call('GET', '/api/v1/keys');
  const mine = list.body.data.find((k: { id: string }) => k.id === id);
  t.deepEqual(Object.keys(mine).sort(), ['cgroup_prefix', 'created_at', 'id', 'name', 'tenant']);
  t.is((await h.call('GET', '/api/v1/computers', { key })).status, 200);
  t.is((await h.call('DELETE', `/api/v1/keys/${id}`)).status, 204);
  t.is((await h.call('GET', '/api/v1/computers', { key })).status, 401);
  t.is((await h.call('DELETE', `/api/v1/keys/${id}`)).status, 404);
  t.is((await h.call('DELETE', '/api/v1/keys/nonsense')).status, 404);
});

test('tenant keys cannot manage keys (403)', async (t) => {
  const { key } = await tenantKey('t-nokeys');
  const r = await h.call('POST', '/api/v1/keys', { key, body: { tenant: 't-nokeys' } });
  t.is(r.status, 403);
  t.is(r.body.error.code, 'forbidden');
  t.is((await h.call('GET', '/api/v1/keys', { key })).status, 403);
  const bad = await h.call('POST', '/api/v1/keys', { body: { tenant: '' } });
  t.is(bad.status, 400);
  t.regex(bad.body.error.message, /^tenant: /);
});

test('tenant isolation: other tenants computers answer 404, and lists hold only ones own', async (t) => {
  const a = await tenantKey('acme');
  const b = await tenantKey('globex');
  await register(h, 'acme~1', {}, a.key);
  await register(h, 'globex~1', {}, b.key);
  await register(h, 'untenanted');

  const mine = await h.call('GET', '/api/v1/computers/acme~1', { key: a.key });
  t.is(mine.status, 200);
  t.is(mine.body.data.tenant, 'acme');

  for (const [method, path, body] of [
    ['GET', '/api/v1/computers/globex~1', undefined],
    ['GET', '/api/v1/computers/globex~1/network-policy', undefined],
    ['PUT', '/api/v1/computers/globex~1/network-policy', { mode: 'isolated' }],
    ['DELETE', '/api/v1/computers/globex~1/network-policy', undefined],
    ['DELETE', '/api/v1/computers/globex~1', undefined],
    ['GET', '/api/v1/computers/untenanted', undefined],
    ['GET', '/api/v1/computers/does-not-exist', undefined],
  ] as const) {
    const r = await h.call(method, path, { key: a.key, ...(body ? { body } : {}) });
    t.is(r.status, 404, `${method} ${path}`);
    t.deepEqual(r.body, { error: { code: 'computer_not_found', message: 'computer not found' } }, path);
  }
  // Registering another tenant's id is refused like any id outside the key's namespace (see computers.test.ts).
  const stolen = await h.call('PUT', '/api/v1/computers/globex~1', {
    key: a.key,
    body: { cgroup: 'egressd/stolen' },
  });
  t.is(stolen.body.error.code, 'id_outside_namespace');
  const policy = await h.call('GET', '/api/v1/computers/globex~1/network-policy');
  t.is(policy.body.data.mode, 'unrestricted', 'globex~1 untouched');
  t.is((await h.call('GET', '/api/v1/computers/globex~1')).body.data.cgroup, 'egressd/globex~1');

  const list = await h.call('GET', '/api/v1/computers', { key: a.key });
  t.deepEqual(
    list.body.data.map((c: { id: string }) => c.id),
    ['acme~1'],
  );
  const wrongTenant = await h.call('PUT', '/api/v1/computers/acme~2', {
    key: a.key,
    body: { cgroup: 'x', tenant: 'globex' },
  });
  t.is(wrongTenant.status, 400);
  const own = await h.call('PUT', '/api/v1/computers/acme~2/network-policy?wait=0', {
    key: a.key,
    body: { mode: 'isolated' },
  });
  t.is(own.status, 404, 'not registered yet');
  await register(h, 'acme~2', { tenant: 'acme' }, a.key);
  const set = await h.call('PUT', '/api/v1/computers/acme~2/network-policy?wait=0', {
    key: a.key,
    body: { mode: 'isolated' },
  });
  t.is(set.status, 202);
  t.is((await h.call('DELETE', '/api/v1/computers/acme~2', { key: a.key })).status, 204);
});
