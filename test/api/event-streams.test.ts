/**
 * Event streams (SSE): events fan out from the one EventFeed reader, the
 * per-key limit, revocation ending a key's streams (in this process, in
 * another, and through the periodic key check), and slow clients dropped.
 */
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import test from 'ava';
import { type App, createApp } from '../../api/routes/app.js';
import { keys } from '../../store/keys.js';
import { Store } from '../../store/store.js';
import { ADMIN_KEY, type Harness, register, startHarness } from './harness.js';
import { openStream, type RawStream } from './sse.js';

let h: Harness;
let port: number;
const opened: RawStream[] = [];
const others: { server: Server; store: Store }[] = [];

test.before(async () => {
  h = await startHarness({ ssePerKey: 3 });
  port = (h.server.address() as AddressInfo).port;
});
test.after.always(async () => {
  for (const s of opened) s.close();
  for (const o of others) {
    o.server.closeAllConnections();
    o.server.close();
    await o.store.close();
  }
  await h?.close();
});

const streamPath = (id: string) => `/api/v1/computers/${id}/network-policy/events/stream`;

async function open(id: string, key = ADMIN_KEY, at = port): Promise<RawStream> {
  const s = await openStream(at, streamPath(id), key);
  opened.push(s);
  return s;
}

async function tenantKey(tenant: string): Promise<{ id: string; key: string }> {
  const r = await h.call('POST', '/api/v1/keys', { body: { tenant } });
  if (r.status !== 201) throw new Error(`POST /keys: ${r.status} ${r.text}`);
  return { id: r.body.data.id, key: r.body.data.key };
}

/** Another API process on the same Redis (its own Store, app and port). */
async function anotherApp(streams?: { keyCheckMs: number }): Promise<{ app: App; port: number }> {
  const store = new Store({ url: h.redis.url });
  await store.connect();
  const app = createApp({ store, config: h.config, ...(streams ? { streams } : {}) });
  const server = createServer(app.callback());
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  others.push({ server, store });
  return { app, port: (server.address() as AddressInfo).port };
}

async function until(what: () => boolean, ms: number, message: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!what()) {
    if (Date.now() > deadline) throw new Error(message);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test.serial(
  'events reach the streams of their own computer only, from the time the stream opened',
  async (t) => {
    await register(h, 'fan-1');
    await register(h, 'fan-2');
    await h.store.appendEvents('fan-1', [{ computer: 'fan-1', port: 1, reason: 'mode' }]);
    const a = await open('fan-1');
    const b = await open('fan-2');
    const tenant = await tenantKey('fan-tenant');
    await register(h, 'fan-3', { tenant: 'fan-tenant' });
    const c = await open('fan-1', tenant.key);
    t.is(c.status, 404, "another tenant's computer is not found");
    const a2 = await open('fan-1', tenant.key.replace(/.$/, 'x'));
    t.is(a2.status, 401);
    const own = await open('fan-3', tenant.key);
    for (const s of [a, b, own]) {
      t.is(s.status, 200);
      await s.waitFor(/: connected/);
    }
    t.regex(a.text, /content-type: text\/event-stream/i);
    t.is(h.store.eventFeed().computers, 3, 'one entry per computer followed');

    await h.store.appendEvents('fan-1', [{ computer: 'fan-1', port: 11, reason: 'rule' }]);
    await h.store.appendEvents('fan-2', [
      { computer: 'fan-2', port: 21, reason: 'rule' },
      { computer: 'fan-2', port: 22, reason: 'rule' },
    ]);
    await h.store.appendEvents('fan-3', [{ computer: 'fan-3', port: 31, reason: 'mode' }]);
    await a.waitFor(/"port":11/);
    await b.waitFor(/"port":22/);
    await own.waitFor(/"port":31/);
    t.deepEqual(a.events(), [{ computer: 'fan-1', port: 11, reason: 'rule' }], 'not the event from before');
    t.deepEqual(
      b.events().map((e) => (e as { port: number }).port),
      [21, 22],
    );
    t.deepEqual(own.events(), [{ computer: 'fan-3', port: 31, reason: 'mode' }]);

    // A second stream of a computer already followed starts from now as well.
    const a3 = await open('fan-1');
    await a3.waitFor(/: connected/);
    await h.store.appendEvents('fan-1', [{ computer: 'fan-1', port: 12, reason: 'rule' }]);
    await a3.waitFor(/"port":12/);
    await a.waitFor(/"port":12/);
    t.deepEqual(
      a3.events().map((e) => (e as { port: number }).port),
      [12],
    );

    for (const s of [a, a3, b, own]) s.close();
    await until(() => h.app.streams.size === 0, 2000, 'streams still counted after their clients left');
    t.is(h.store.eventFeed().computers, 0, 'nothing followed once every stream is gone');
  },
);

test.serial(
  'one key holds at most EGRESSD_SSE_PER_KEY streams: 429 past it; a closed stream frees a slot',
  async (t) => {
    await register(h, 'limit-1');
    const first = await open('limit-1');
    const second = await open('limit-1');
    const third = await open('limit-1');
    t.deepEqual([first.status, second.status, third.status], [200, 200, 200]);
    const refused = await h.call('GET', streamPath('limit-1'));
    t.is(refused.status, 429);
    t.is(refused.body.error.code, 'too_many_streams');
    t.regex(refused.body.error.message, /holds 3 open event streams.*EGRESSD_SSE_PER_KEY/);
    t.is(refused.headers.get('retry-after'), '5');
    // The limit is per key: another key still gets its own.
    const tenant = await tenantKey('limit-tenant');
    await register(h, 'limit-2', { tenant: 'limit-tenant' });
    const theirs = await open('limit-2', tenant.key);
    t.is(theirs.status, 200);

    first.close();
    let again: RawStream | undefined;
    const deadline = Date.now() + 2000;
    while (Date.now() < deadline) {
      again = await open('limit-1');
      if (again.status === 200) break;
      again.close();
      await new Promise((r) => setTimeout(r, 20));
    }
    t.is(again?.status, 200, 'a slot is free again once a stream closed');
    for (const s of [second, third, theirs, again]) s?.close();
    await until(() => h.app.streams.size === 0, 2000, 'streams still counted');
    const metrics = await h.call('GET', '/metrics');
    t.regex(metrics.text, /egressd_api_event_streams_refused_total\{limit="per_key"\} 1/);
    t.regex(metrics.text, /egressd_api_event_streams 0/);
  },
);

test.serial('a computer that joins does not wait for the XREAD in flight to time out', async (t) => {
  await register(h, 'join-1');
  await register(h, 'join-2');
  const first = await open('join-1');
  await first.waitFor(/: connected/);
  // Let the feed's XREAD (BLOCK 2000 ms) block on join-1 alone.
  await new Promise((r) => setTimeout(r, 200));
  const second = await open('join-2');
  await second.waitFor(/: connected/);
  const started = Date.now();
  await h.store.appendEvents('join-2', [{ computer: 'join-2', port: 2, reason: 'mode' }]);
  await second.waitFor(/"port":2/);
  const took = Date.now() - started;
  t.true(
    took < 1000,
    `the joined computer's event took ${took} ms (CLIENT UNBLOCK should make it immediate)`,
  );
  t.log(`event of a computer that joined a blocked XREAD arrived in ${took} ms`);
  first.close();
  second.close();
  await until(() => h.app.streams.size === 0, 2000, 'streams still counted');
});

test.serial('revoking a key ends its open streams in this process and in another one', async (t) => {
  const tenant = await tenantKey('revoke-tenant');
  await register(h, 'revoke-1', { tenant: 'revoke-tenant' });
  const other = await anotherApp();
  const here = await open('revoke-1', tenant.key);
  const there = await open('revoke-1', tenant.key, other.port);
  const admins = await open('revoke-1');
  for (const s of [here, there, admins]) await s.waitFor(/: connected/);

  const started = Date.now();
  t.is((await h.call('DELETE', `/api/v1/keys/${tenant.id}`)).status, 204);
  await Promise.all([here.closed, there.closed]);
  const took = Date.now() - started;
  t.true(took < 2000, `ended after ${took} ms`);
  t.log(`both streams of the revoked key ended ${took} ms after DELETE`);
  t.regex(here.text, /: the API key of this stream was revoked/);
  t.false(admins.socket.destroyed, "the admin's stream stays");
  t.is(other.app.streams.size, 0);
  const reopened = await h.call('GET', streamPath('revoke-1'), { key: tenant.key });
  t.is(reopened.status, 401);
  admins.close();
});

test.serial('a key removed without a notice: the periodic key check ends its streams', async (t) => {
  const tenant = await tenantKey('recheck-tenant');
  await register(h, 'recheck-1', { tenant: 'recheck-tenant' });
  const other = await anotherApp({ keyCheckMs: 200 });
  const s = await open('recheck-1', tenant.key, other.port);
  await s.waitFor(/: connected/);
  // Behind the API's back: no pub/sub notice.
  await h.store.redis.multi().del(keys.apiKey(tenant.id)).zrem(keys.apiKeys(), tenant.id).exec();
  const started = Date.now();
  await s.closed;
  t.true(Date.now() - started < 2000, `ended after ${Date.now() - started} ms`);
  t.is(other.app.streams.size, 0);
});

test.serial('a client that does not read is dropped once its backlog passes the bound', async (t) => {
  await register(h, 'slow-1');
  const slow = await open('slow-1');
  await slow.waitFor(/: connected/);
  slow.socket.pause();
  const pad = 'x'.repeat(32 * 1024);
  const before = h.app.streams.size;
  let batches = 0;
  // The kernel's socket buffers may take several MB on loopback before Node holds anything back.
  while (h.app.streams.size === before && batches < 60) {
    await h.store.appendEvents(
      'slow-1',
      Array.from({ length: 50 }, (_, i) => ({ computer: 'slow-1', port: i, pad })),
    );
    batches++;
    await new Promise((r) => setTimeout(r, 20));
  }
  await until(() => h.app.streams.size === before - 1, 5000, 'the slow stream was not dropped');
  t.log(`dropped after ${batches} batches of 50 × 32 KiB events`);
  const metrics = await h.call('GET', '/metrics');
  t.regex(metrics.text, /egressd_api_event_streams_ended_total\{reason="slow"\} 1/);
  slow.close();
  await h.store.redis.del(keys.events('slow-1'));
});

test.serial('Redis going away ends the streams; once it is back they open and deliver again', async (t) => {
  await register(h, 'outage-1');
  const before = await open('outage-1');
  await before.waitFor(/: connected/);
  await h.redis.stop();
  try {
    await before.closed;
    t.regex(before.text, /: the event store \(Redis\) went away; reconnect/);
    const refused = await h.call('GET', streamPath('outage-1'));
    t.is(refused.status, 503);
    t.is(refused.body.error.code, 'store_unavailable');
  } finally {
    await h.redis.restart();
  }
  let after: RawStream | undefined;
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    after = await open('outage-1');
    if (after.status === 200) break;
    after.close();
    await new Promise((r) => setTimeout(r, 100));
  }
  t.is(after?.status, 200, 'streams open again once Redis is back');
  await after?.waitFor(/: connected/);
  await h.store.appendEvents('outage-1', [{ computer: 'outage-1', port: 5, reason: 'mode' }]);
  await after?.waitFor(/"port":5/);
  after?.close();
});
