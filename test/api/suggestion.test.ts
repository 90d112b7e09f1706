/**
 * GET /computers/{id}/network-policy/suggestion against a real Redis: built
 * from what the store's observations hold, `since`, tenant scoping, a bad
 * since, and that its policy PUTs back as it is. Every answer is checked
 * against the OpenAPI document by the harness.
 */
import test from 'ava';
import { Client } from '../../api/client.js';
import type { Observation } from '../../store/store.js';
import { ADMIN_KEY, type Harness, register, startHarness } from './harness.js';

let h: Harness;
test.before(async () => {
  h = await startHarness();
});
test.after.always(async () => {
  await h?.close();
});

const path = (id: string) => `/api/v1/computers/${id}/network-policy`;
const HOUR = 3_600_000;

function seen(host: string, port: number, protocol: 'tcp' | 'udp', agoMs: number, count = 1): Observation {
  const lastSeen = Date.now() - agoMs;
  return { host, port, protocol, count, firstSeen: lastSeen - 1000, lastSeen };
}

async function tenantKey(tenant: string): Promise<string> {
  const r = await h.call('POST', '/api/v1/keys', { body: { tenant, cgroup_prefix: 'egressd' } });
  if (r.status !== 201) throw new Error(`key: ${r.status} ${r.text}`);
  return r.body.data.key;
}

test('the suggestion after putObservations: rules, the observations behind them, a wildcard, IPv6', async (t) => {
  await register(h, 'sug-1');
  await h.store.putObservations('sug-1', [
    seen('github.com', 443, 'tcp', 1000, 7),
    ...['a', 'b', 'c', 'd'].map((l) => seen(`${l}.cdn.example.com`, 443, 'tcp', 2000)),
    seen('192.0.2.10', 5432, 'tcp', 3000, 2),
    seen('2001:db8::53', 53, 'udp', 4000),
  ]);
  const r = await h.call('GET', `${path('sug-1')}/suggestion`);
  t.is(r.status, 200);
  const data = r.body.data;
  t.deepEqual(data.policy, {
    mode: 'allowlist',
    rules: [
      { host: '*.cdn.example.com', port: 443, protocol: 'tcp' },
      { host: 'github.com', port: 443, protocol: 'tcp' },
      { host: '192.0.2.10', port: 5432, protocol: 'tcp' },
      { host: '2001:db8::53', port: 53, protocol: 'udp' },
    ],
  });
  t.is(data.wildcard_threshold, 3);
  t.is(data.since, null);
  t.is(data.observed, 7);
  t.is(data.note, null);
  t.deepEqual(data.skipped, []);
  t.deepEqual(
    data.rules.map((x: { rule: unknown }) => x.rule),
    data.policy.rules,
  );
  t.is(data.rules[0].observations.length, 4);
  const github = data.rules[1].observations[0];
  t.like(github, { host: 'github.com', port: 443, protocol: 'tcp', count: 7 });
  t.regex(github.last_seen, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  t.true(Date.parse(github.first_seen) < Date.parse(github.last_seen));
  // The typed client reads the same.
  const client = new Client({ baseUrl: h.baseUrl, apiKey: ADMIN_KEY });
  t.deepEqual(await client.networkPolicy.suggestion('sug-1'), data);
});

test('PUTting data.policy back is accepted as it is, and stores exactly those rules', async (t) => {
  await register(h, 'sug-put');
  await h.store.putObservations('sug-put', [
    ...['w1', 'w2', 'w3', 'w4', 'w5'].map((l) => seen(`${l}.pkg.example.net`, 443, 'tcp', 1000)),
    seen('pkg.example.net', 443, 'tcp', 1000),
    seen('2001:DB8:0:0::1', 8443, 'tcp', 1000),
    seen('198.51.100.7', 123, 'udp', 1000),
  ]);
  const { data } = (await h.call('GET', `${path('sug-put')}/suggestion`)).body;
  const put = await h.call('PUT', `${path('sug-put')}?wait=0`, { body: data.policy });
  t.true(put.status === 200 || put.status === 202, put.text);
  t.is(put.body.data.mode, 'allowlist');
  t.is(put.body.data.dns, 'listed');
  t.false(put.body.data.audit);
  t.deepEqual(put.body.data.rules, data.policy.rules);
  // An address-only suggestion: dns none by default.
  await register(h, 'sug-addr');
  await h.store.putObservations('sug-addr', [seen('203.0.113.5', 443, 'tcp', 1000)]);
  const addr = (await h.call('GET', `${path('sug-addr')}/suggestion`)).body.data;
  const putAddr = await h.call('PUT', `${path('sug-addr')}?wait=0`, { body: addr.policy });
  t.true(putAddr.status === 200 || putAddr.status === 202, putAddr.text);
  t.is(putAddr.body.data.dns, 'none');
});

test('nothing observed: isolated with dns none, a note, and it PUTs back', async (t) => {
  await register(h, 'sug-empty');
  const r = await h.call('GET', `${path('sug-empty')}/suggestion`);
  t.is(r.status, 200);
  t.deepEqual(r.body.data.policy, { mode: 'isolated', rules: [], dns: 'none' });
  t.deepEqual(r.body.data.rules, []);
  t.is(r.body.data.observed, 0);
  t.regex(r.body.data.note, /^nothing was observed/);
  const put = await h.call('PUT', `${path('sug-empty')}?wait=0`, { body: r.body.data.policy });
  t.true(put.status === 200 || put.status === 202, put.text);
  t.is(put.body.data.dns, 'none');
});

test('since: only what was last seen at or after it; echoed back', async (t) => {
  await register(h, 'sug-since');
  await h.store.putObservations('sug-since', [
    seen('old.example', 443, 'tcp', 5 * HOUR),
    seen('new.example', 443, 'tcp', 1000),
  ]);
  const since = new Date(Date.now() - HOUR).toISOString();
  const r = await h.call('GET', `${path('sug-since')}/suggestion?since=${since}`);
  t.is(r.status, 200);
  t.is(r.body.data.since, since);
  t.is(r.body.data.observed, 1);
  t.deepEqual(r.body.data.policy.rules, [{ host: 'new.example', port: 443, protocol: 'tcp' }]);
  const all = await h.call('GET', `${path('sug-since')}/suggestion`);
  t.is(all.body.data.observed, 2);
  const future = await h.call('GET', `${path('sug-since')}/suggestion?since=2999-01-01T00:00:00Z`);
  t.is(future.body.data.observed, 0);
  t.is(future.body.data.policy.mode, 'isolated');
});

test('a bad since is 400 saying what to send', async (t) => {
  await register(h, 'sug-bad');
  for (const since of ['yesterday', '', 'since=2026-13-45']) {
    const r = await h.call('GET', `${path('sug-bad')}/suggestion?since=${encodeURIComponent(since)}`);
    t.is(r.status, 400, since);
    t.is(r.body.error.code, 'invalid_request');
    t.is(r.body.error.message, 'since: must be an RFC 3339 time, for example 2026-01-01T00:00:00Z');
  }
});

test('unknown computer, or another tenant’s: 404 computer_not_found; its own tenant sees it', async (t) => {
  const missing = await h.call('GET', `${path('nobody-here')}/suggestion`);
  t.is(missing.status, 404);
  t.deepEqual(missing.body, { error: { code: 'computer_not_found', message: 'computer not found' } });
  const mine = await tenantKey('sug-t1');
  const theirs = await tenantKey('sug-t2');
  await register(h, 'sug-t1~box', {}, mine);
  await h.store.putObservations('sug-t1~box', [seen('private.example', 443, 'tcp', 1000)]);
  const other = await h.call('GET', `${path('sug-t1~box')}/suggestion`, { key: theirs });
  t.is(other.status, 404);
  t.is(other.body.error.code, 'computer_not_found');
  t.false(other.text.includes('private.example'));
  const own = await h.call('GET', `${path('sug-t1~box')}/suggestion`, { key: mine });
  t.is(own.status, 200);
  t.is(own.body.data.policy.rules[0].host, 'private.example');
  t.is((await h.call('GET', `${path('sug-t1~box')}/suggestion`)).status, 200, 'the admin sees every tenant');
  t.is((await h.call('GET', `${path('sug-t1~box')}/suggestion`, { key: '' })).status, 401);
});

test('observations no rule can hold: in skipped and the note, not in the policy', async (t) => {
  await register(h, 'sug-skip');
  await h.store.putObservations('sug-skip', [
    seen('_sip._tcp.example.com', 5060, 'udp', 1000),
    seen('fine.example', 443, 'tcp', 1000),
  ]);
  const r = await h.call('GET', `${path('sug-skip')}/suggestion`);
  t.is(r.status, 200);
  t.deepEqual(r.body.data.policy.rules, [{ host: 'fine.example', port: 443, protocol: 'tcp' }]);
  t.is(r.body.data.skipped.length, 1);
  t.is(r.body.data.skipped[0].host, '_sip._tcp.example.com');
  t.regex(r.body.data.note, /^1 observation is left out/);
});
