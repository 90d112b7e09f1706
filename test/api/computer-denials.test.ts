/**
 * GET /api/v1/computers?include=denials_1m: each listed computer's deny
 * events of the last minute, counted in Redis up to RECENT_COUNT_CAP, only
 * for the computers the key may see; without include the reply is as before.
 */
import test from 'ava';
import { RECENT_COUNT_CAP } from '../../store/store.js';
import { type Harness, startHarness } from './harness.js';

let h: Harness;
let keyA: string;

const BUSY = 'den-a~busy';
const QUIET = 'den-a~quiet';
const STORM = 'den-b~storm';
const LIST = '/api/v1/computers?limit=1000';

const deny = (id: string, port: number) => ({
  computer: id,
  port,
  reason: 'rule',
  at: new Date().toISOString(),
});

test.before(async () => {
  h = await startHarness();
  const tenantKey = async (tenant: string) =>
    (await h.call('POST', '/api/v1/keys', { body: { tenant, cgroup_prefix: tenant } })).body.data
      .key as string;
  keyA = await tenantKey('den-a');
  const keyB = await tenantKey('den-b');
  for (const [id, key] of [
    [BUSY, keyA],
    [QUIET, keyA],
    [STORM, keyB],
  ] as const) {
    const put = await h.call('PUT', `/api/v1/computers/${id}`, {
      key,
      body: { cgroup: `${id.split('~')[0]}/${id}` },
    });
    if (put.status !== 201) throw new Error(`PUT ${id}: ${put.text}`);
  }
  // Two minutes ago: as the agent would have written it then (entry ids are ms timestamps).
  const old = `${Date.now() - 120_000}-0`;
  for (const id of [BUSY, QUIET]) {
    await h.store.redis.xadd(`egressd:computer:${id}:events`, old, 'event', JSON.stringify(deny(id, 1)));
  }
  // Now, through the agent's own writer.
  await h.store.appendEvents(BUSY, [deny(BUSY, 2), deny(BUSY, 3), deny(BUSY, 4)]);
  await h.store.appendEvents(
    STORM,
    Array.from({ length: RECENT_COUNT_CAP + 50 }, (_, i) => deny(STORM, i)),
  );
});
test.after.always(async () => {
  await h?.close();
});

function byId(data: Array<{ id: string }>): Map<string, Record<string, unknown>> {
  return new Map(data.map((c) => [c.id, c as Record<string, unknown>]));
}

test('include=denials_1m counts the last minute only, and stops at the cap', async (t) => {
  const r = await h.call('GET', `${LIST}&include=denials_1m`);
  t.is(r.status, 200);
  const items = byId(r.body.data);
  t.deepEqual(
    items.get(BUSY)?.['denials_1m'],
    { count: 3, capped: false },
    'the event of two minutes ago is not counted',
  );
  t.deepEqual(items.get(QUIET)?.['denials_1m'], { count: 0, capped: false });
  t.deepEqual(items.get(STORM)?.['denials_1m'], { count: RECENT_COUNT_CAP, capped: true });
});

test('a tenant key gets counts only for its own computers', async (t) => {
  const r = await h.call('GET', `${LIST}&include=denials_1m`, { key: keyA });
  t.is(r.status, 200);
  t.deepEqual(
    r.body.data.map((c: { id: string; denials_1m: unknown }) => [c.id, c.denials_1m]),
    [
      [BUSY, { count: 3, capped: false }],
      [QUIET, { count: 0, capped: false }],
    ],
  );
});

test('without include the reply is as before: no denials_1m, the same items and cursor', async (t) => {
  const plain = await h.call('GET', '/api/v1/computers?limit=2');
  const counted = await h.call('GET', '/api/v1/computers?limit=2&include=denials_1m');
  t.is(plain.status, 200);
  t.true(plain.body.data.every((c: object) => !('denials_1m' in c)));
  t.deepEqual(
    counted.body.data.map(({ denials_1m, ...rest }: { denials_1m: unknown }) => rest),
    plain.body.data,
  );
  t.is(counted.body.next_cursor, plain.body.next_cursor);
  // Paging with include counts each page's computers.
  const next = await h.call(
    'GET',
    `/api/v1/computers?limit=2&include=denials_1m&cursor=${plain.body.next_cursor}`,
  );
  t.deepEqual(
    next.body.data.map((c: { id: string; denials_1m: unknown }) => [c.id, c.denials_1m]),
    [[STORM, { count: RECENT_COUNT_CAP, capped: true }]],
  );
});

test('include of an unknown field, or given twice, is a 400 that names the known ones', async (t) => {
  for (const query of ['include=denials_1h', 'include=denials_1m&include=denials_1m']) {
    const r = await h.call('GET', `/api/v1/computers?${query}`);
    t.is(r.status, 400, query);
    t.is(r.body.error.code, 'invalid_request');
    t.regex(r.body.error.message, /include: .*denials_1m/);
  }
  t.is((await h.call('GET', '/api/v1/computers?include=denials_1m,denials_1m')).status, 200);
});
