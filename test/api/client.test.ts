import test from 'ava';
import { ApiClientError, Client } from '../../api/client.js';
import { ADMIN_KEY, type Harness, startHarness } from './harness.js';

let h: Harness;
let client: Client;
test.before(async () => {
  h = await startHarness();
  client = new Client({ baseUrl: h.baseUrl, apiKey: ADMIN_KEY });
});
test.after.always(async () => {
  await h?.close();
});

test('the seed quick start, through the client', async (t) => {
  const computer = await client.computers.put('sdk-1', { cgroup: 'egressd/sdk-1' });
  t.true(computer.created);
  t.is(computer.node, 'node-a');
  t.false((await client.computers.put('sdk-1', { cgroup: 'egressd/sdk-1' })).created);
  const policy = await client.networkPolicy.update(
    'sdk-1',
    {
      mode: 'allowlist',
      rules: [
        { host: 'github.com', port: 443, protocol: 'tcp' },
        { host: 'pypi.org', port: 443, protocol: 'tcp' },
        { host: 'files.pythonhosted.org', port: 443, protocol: 'tcp' },
      ],
    },
    { wait: 0 },
  );
  t.is(policy.mode, 'allowlist');
  t.is(policy.rules.length, 3);
  t.is(policy.enforcement.state, 'pending');
  t.deepEqual(await client.networkPolicy.get('sdk-1'), policy);
  const denied = await client.networkPolicy.update(
    'sdk-1',
    { mode: 'denylist', rules: [{ host: '185.220.0.0/16' }] },
    {
      wait: 0,
      ifMatch: policy.version,
    },
  );
  t.deepEqual(denied.rules, [{ host: '185.220.0.0/16', protocol: 'any' }]);
  const reset = await client.networkPolicy.delete('sdk-1', { wait: 0 });
  t.is(reset.mode, 'unrestricted');
});

test('failures are ApiClientError with status and code', async (t) => {
  const missing = await t.throwsAsync(() => client.networkPolicy.get('nope'), { instanceOf: ApiClientError });
  t.is(missing?.status, 404);
  t.is(missing?.code, 'computer_not_found');
  t.is(missing?.message, 'computer not found');
  await client.computers.put('sdk-2', { cgroup: 'egressd/sdk-2' });
  const required = await t.throwsAsync(() => client.networkPolicy.update('sdk-2', { mode: 'allowlist' }), {
    instanceOf: ApiClientError,
  });
  t.is(required?.status, 400);
  t.is(required?.code, 'rules_required');
  t.is(required?.message, 'rules required for allowlist/denylist mode');
  const stale = await t.throwsAsync(
    () => client.networkPolicy.update('sdk-2', { mode: 'isolated' }, { wait: 0, ifMatch: 1 }),
    { instanceOf: ApiClientError },
  );
  t.is(stale?.status, 412);
  const bad = new Client({ baseUrl: h.baseUrl, apiKey: 'wrong' });
  const unauthorized = await t.throwsAsync(() => bad.computers.list(), { instanceOf: ApiClientError });
  t.is(unauthorized?.status, 401);
  t.is(unauthorized?.code, 'unauthorized');
});

test('send() answers any status with its headers; a raw body goes as it is; apiKey "" sends none', async (t) => {
  const missing = await client.send('GET', '/api/v1/computers/nope/network-policy');
  t.is(missing.status, 404);
  t.like(missing.body, { error: { code: 'computer_not_found' } });
  t.regex(missing.headers.get('content-type') ?? '', /^application\/json/);
  t.true(missing.headersAt >= missing.sentAt);
  await client.computers.put('sdk-3', { cgroup: 'egressd/sdk-3' });
  const raw = await client.send('PUT', '/api/v1/computers/sdk-3/network-policy', {
    rawBody: '{"mode":',
    headers: { 'content-type': 'application/json' },
  });
  t.is(raw.status, 400);
  t.like(raw.body, { error: { code: 'invalid_json' } });
  const stored = await client.send('PUT', '/api/v1/computers/sdk-3/network-policy', {
    body: { mode: 'isolated' },
    query: { wait: 0 },
  });
  t.is(stored.status, 202);
  t.is(stored.headers.get('etag'), `"${(stored.body as { data: { version: number } }).data.version}"`);
  t.is((await client.send('GET', '/api/v1/computers', { apiKey: '' })).status, 401);
});

test('computers and keys through the client; a tenant client sees only its own', async (t) => {
  await client.computers.put('sdk-admin-only', { cgroup: 'egressd/sdk-admin-only' });
  const key = await client.keys.create({ tenant: 'sdk-tenant', name: 'ci', cgroup_prefix: 'egressd' });
  t.is(key.tenant, 'sdk-tenant');
  t.true((await client.keys.list()).some((k) => k.id === key.id));
  const tenant = new Client({ baseUrl: `${h.baseUrl}/`, apiKey: key.key });
  await tenant.computers.put('sdk-tenant~t1', { cgroup: 'egressd/sdk-t1' });
  t.is((await tenant.computers.get('sdk-tenant~t1')).tenant, 'sdk-tenant');
  const seen: string[] = [];
  for await (const c of tenant.computers.all()) seen.push(c.id);
  t.deepEqual(seen, ['sdk-tenant~t1']);
  const all: string[] = [];
  for await (const c of client.computers.all()) all.push(c.id);
  t.true(all.includes('sdk-tenant~t1') && all.length > 1);
  const hidden = await t.throwsAsync(() => tenant.networkPolicy.get('sdk-1'), { instanceOf: ApiClientError });
  t.is(hidden?.status, 404);
  await tenant.computers.delete('sdk-tenant~t1');
  await client.keys.delete(key.id);
  const revoked = await t.throwsAsync(() => tenant.computers.list(), { instanceOf: ApiClientError });
  t.is(revoked?.status, 401);
});
