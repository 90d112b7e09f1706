/** Concurrency, and Redis going away mid-run (503) and coming back (recovery). */
import { once } from 'node:events';
import test from 'ava';
import { Client } from '../../api/client.js';
import { createApp } from '../../api/routes/app.js';
import { resolveEgressdConfig } from '../../cli/config.js';
import { Store } from '../../store/store.js';
import { startRedis } from '../helpers/redis.js';
import { ADMIN_KEY, type Harness, type Reply, register, startHarness } from './harness.js';

let h: Harness;
test.before(async () => {
  h = await startHarness();
});
test.after.always(async () => {
  await h?.close();
});

test.serial('concurrent PUTs leave one whole policy: the last one wins whole', async (t) => {
  await register(h, 'race', { node: 'race-node' });
  const bodies = Array.from({ length: 40 }, (_, i) => ({
    mode: i % 2 ? 'allowlist' : 'denylist',
    rules: Array.from({ length: 25 }, (_, j) => ({ host: `w${i}-r${j}.example`, port: 1000 + i })),
  }));
  const replies = await Promise.all(
    bodies.map((body) => h.call('PUT', '/api/v1/computers/race/network-policy?wait=0', { body })),
  );
  t.true(replies.every((r) => r.status === 202));
  const versions = replies.map((r) => r.body.data.version as number);
  t.is(new Set(versions).size, bodies.length, 'every PUT got a version of its own');
  const got = (await h.call('GET', '/api/v1/computers/race/network-policy')).body.data;
  t.is(got.version, Math.max(...versions));
  const winner = replies.find((r) => r.body.data.version === got.version)!;
  t.deepEqual(got.rules, winner.body.data.rules);
  t.is(got.mode, winner.body.data.mode);
  const ports = new Set(got.rules.map((r: { port: number }) => r.port));
  t.is(ports.size, 1, 'all rules come from one PUT');
  const changes = await h.store.readChanges('race-node', '0-0');
  const policyVersions = changes.filter((c) => c.kind === 'policy').map((c) => c.version);
  t.deepEqual(
    policyVersions,
    [...versions].sort((a, b) => a - b),
    'one change record per version, in order',
  );
});

test.serial('Redis stopped: 503 store_unavailable at once; restarted: service recovers', async (t) => {
  await register(h, 'outage');
  await h.redis.stop();

  const started = Date.now();
  const get = await h.call('GET', '/api/v1/computers/outage/network-policy');
  t.is(get.status, 503);
  t.is(get.body.error.code, 'store_unavailable');
  t.is(get.headers.get('retry-after'), '1');
  const put = await h.call('PUT', '/api/v1/computers/outage/network-policy', { body: { mode: 'isolated' } });
  t.is(put.status, 503);
  t.is(put.body.error.code, 'store_unavailable', 'not connected: the change surely never reached Redis');
  const list = await h.call('GET', '/api/v1/computers');
  t.is(list.status, 503);
  t.true(Date.now() - started < 5000, `answered in ${Date.now() - started} ms`);
  const ready = await h.call('GET', '/readyz', { key: '' });
  t.is(ready.status, 503);
  t.is((await h.call('GET', '/healthz', { key: '' })).status, 200);
  const bad = await h.call('PUT', '/api/v1/computers/outage/network-policy', { body: { mode: 'nope' } });
  t.is(bad.status, 400, 'bad input is still 400 without Redis');

  await h.redis.restart();
  // Bounded: ioredis reconnects within its retry delay (at most 1 s apart).
  let status = 0;
  for (let i = 0; i < 100 && status !== 200; i++) {
    status = (await h.call('GET', '/readyz', { key: '' })).status;
    if (status !== 200) await new Promise((r) => setTimeout(r, 100));
  }
  t.is(status, 200, 'ready again');
  // The test Redis persists (append-only file, fsync always), like a production one: nothing was lost.
  t.is((await h.call('GET', '/api/v1/computers/outage/network-policy')).status, 200);
  await register(h, 'outage', { node: 'back' });
  const pending = h.call('PUT', '/api/v1/computers/outage/network-policy?wait=10000', {
    body: { mode: 'isolated' },
  });
  let version = 0;
  for (let i = 0; i < 100 && version === 0; i++) {
    const changes = await h.store.readChanges('back', '0-0', { blockMs: 50 });
    version = changes.find((c) => c.kind === 'policy')?.version ?? 0;
  }
  await h.store.ackEnforced('outage', version, new Date(), 'back');
  const r = await pending;
  t.is(r.status, 200, 'acknowledgements reach waiters again after the restart');
  t.is(r.body.data.enforcement.state, 'enforced');
});

test.serial(
  'Redis frozen (SIGSTOP): changes answer 503 store_outcome_unknown, reads store_unavailable; repeating them after the outage leaves one version',
  async (t) => {
    await register(h, 'frozen', { node: 'frozen-node' });
    await register(h, 'frozen-gone', { node: 'frozen-node' });
    const policyPath = '/api/v1/computers/frozen/network-policy';
    // Every script this Redis will run is loaded now (an earlier test restarted it, and an
    // EVALSHA that Redis answers with NOSCRIPT after the timeout never took effect): so the
    // frozen Redis does run each change when it resumes, the case of an honest 503 that matters.
    await h.call('PUT', `${policyPath}?wait=0`, { body: { mode: 'isolated' } });
    await register(h, 'frozen-warm', { node: 'frozen-node' });
    await h.call('DELETE', '/api/v1/computers/frozen-warm');
    const v0 = (await h.call('GET', policyPath)).body.data.version as number;
    const policy = { mode: 'allowlist', rules: [{ host: '192.0.2.7', port: 443, protocol: 'tcp' }] };
    const ifMatch = { 'if-match': `"${v0}"` };
    let replies: Reply[];
    const started = Date.now();
    h.redis.freeze();
    try {
      replies = await Promise.all([
        h.call('PUT', `${policyPath}?wait=0`, { body: policy, headers: ifMatch }),
        h.call('DELETE', '/api/v1/computers/frozen-gone'),
        h.call('PUT', '/api/v1/computers/frozen-new', { body: { cgroup: 'egressd/frozen-new' } }),
        h.call('POST', '/api/v1/keys', { body: { tenant: 'frozen-tenant' } }),
        h.call('GET', policyPath),
      ]);
    } finally {
      h.redis.thaw();
    }
    const [put, del, register2, key, get] = replies;
    t.true(Date.now() - started < 10_000, `answered in ${Date.now() - started} ms`);
    for (const r of [put, del, register2, key]) {
      t.is(r?.status, 503);
      t.is(r?.body.error.code, 'store_outcome_unknown', r?.text);
      t.is(r?.headers.get('retry-after'), '1');
    }
    t.regex(put?.body.error.message, /GET \/api\/v1\/computers\/frozen\/network-policy/);
    t.regex(put?.body.error.message, /same PUT/);
    t.regex(del?.body.error.message, /GET \/api\/v1\/computers\/frozen-gone/);
    t.is(get?.status, 503);
    t.is(get?.body.error.code, 'store_unavailable', 'a read changes nothing: its outcome is no question');

    // Bounded: Redis answers again within a few seconds of SIGCONT.
    let after: Reply | undefined;
    for (let i = 0; i < 100 && after?.status !== 200; i++) {
      after = await h.call('GET', policyPath);
      if (after.status !== 200) await new Promise((r) => setTimeout(r, 100));
    }
    t.is(after?.status, 200);
    // The frozen Redis had the changes and ran them when it resumed: the GET tells.
    const v1 = after?.body.data.version as number;
    t.true(v1 > v0);
    t.is(after?.body.data.mode, 'allowlist');
    t.is((await h.call('GET', '/api/v1/computers/frozen-gone')).status, 404);
    t.is((await h.call('GET', '/api/v1/computers/frozen-new')).status, 200);

    // Repeating each change is safe: the same policy under the same version (also with the
    // If-Match the first try was sent with), and no second change record.
    const again = await h.call('PUT', `${policyPath}?wait=0`, { body: policy, headers: ifMatch });
    t.is(again.status, 202, again.text);
    t.is(again.body.data.version, v1);
    const plain = await h.call('PUT', `${policyPath}?wait=0`, { body: policy });
    t.is(plain.body.data.version, v1);
    const records = (await h.store.readChanges('frozen-node', '0-0')).filter(
      (c) => c.computerId === 'frozen' && c.kind === 'policy' && c.version > v0,
    );
    t.deepEqual(
      records.map((c) => c.version),
      [v1],
      'one change record (after the warm-up) for the one stored version',
    );
    t.deepEqual((await h.call('GET', policyPath)).body.data.rules, [
      { host: '192.0.2.7', port: 443, protocol: 'tcp' },
    ]);
    t.is((await h.call('DELETE', '/api/v1/computers/frozen-gone')).status, 404, 'already gone');
    t.is(
      (await h.call('PUT', '/api/v1/computers/frozen-new', { body: { cgroup: 'egressd/frozen-new' } }))
        .status,
      200,
      'already registered',
    );
    // The key's secret was never shown: the message names it, to revoke.
    const keyId = /DELETE \/api\/v1\/keys\/([0-9a-f]{16})/.exec(key?.body.error.message ?? '')?.[1];
    t.truthy(keyId, key?.body.error.message);
    t.is((await h.call('DELETE', `/api/v1/keys/${keyId}`)).status, 204);
  },
);

test.serial('an API started while Redis is down answers 503, then serves once Redis is up', async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.cleanup());
  await redis.stop();
  const store = new Store({ url: redis.url, waitPollMs: 60_000 });
  t.teardown(() => store.close());
  await t.throwsAsync(() => store.connect());
  const config = resolveEgressdConfig(
    {},
    { EGRESSD_ADMIN_KEY: 'k', EGRESSD_DEFAULT_NODE: 'late-node', EGRESSD_WAIT_TIMEOUT_MS: '10000' },
  );
  const server = createApp({ store, config }).createServer().listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => {
    server.closeAllConnections();
    server.close();
  });
  const base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  const client = new Client({ baseUrl: base, apiKey: 'k' });
  const call = (method: string, path: string, body?: unknown) => client.send(method, path, { body });
  t.is((await call('GET', '/api/v1/computers')).status, 503);
  await redis.restart();
  let status = 0;
  for (let i = 0; i < 100 && status !== 200; i++) {
    status = (await call('GET', '/api/v1/computers')).status;
    if (status !== 200) await new Promise((r) => setTimeout(r, 100));
  }
  t.is(status, 200);
  t.is((await call('PUT', '/api/v1/computers/late', { cgroup: 'egressd/late' })).status, 201);
  // The ack subscription was queued while Redis was down: a waiter is woken by it
  // (waitPollMs is a minute, so only the notification can end this wait in time).
  const pending = call('PUT', '/api/v1/computers/late/network-policy?wait=10000', { mode: 'isolated' });
  let version = 0;
  for (let i = 0; i < 100 && version === 0; i++) {
    const changes = await store.readChanges('late-node', '0-0', { blockMs: 50 });
    version = changes.find((c) => c.kind === 'policy')?.version ?? 0;
  }
  const started = Date.now();
  await store.ackEnforced('late', version);
  const r = await pending;
  t.is(r.status, 200);
  t.true(Date.now() - started < 5000);
});

test.serial(
  'Redis killed under load and during a wait: every request ends with 200/202 or 503, none hangs',
  async (t) => {
    await register(h, 'midrun', { node: 'midrun-node' });
    const waiting = h.call('PUT', '/api/v1/computers/midrun/network-policy?wait=10000', {
      body: { mode: 'isolated' },
    });
    let stop = false;
    const statuses: number[] = [];
    const load = (async () => {
      // Bounded: at most 2,000 requests.
      for (let i = 0; i < 2000 && !stop; i++) {
        const r = await h.call('GET', '/api/v1/computers/midrun/network-policy');
        statuses.push(r.status);
      }
    })();
    await new Promise((r) => setTimeout(r, 100));
    const killedAt = Date.now();
    await h.redis.stop();
    const waited = await waiting;
    t.is(waited.status, 202, 'the stored change is answered as pending when Redis goes away mid-wait');
    t.is(waited.body.data.enforcement.state, 'pending');
    t.true(Date.now() - killedAt < 5000);
    await new Promise((r) => setTimeout(r, 200));
    stop = true;
    await load;
    t.true(statuses.length > 0);
    t.deepEqual(
      [...new Set(statuses)].filter((s) => s !== 200 && s !== 503),
      [],
    );
    t.true(statuses.includes(503));
    await h.redis.restart();
    let status = 0;
    for (let i = 0; i < 100 && status !== 200; i++) {
      status = (await h.call('GET', '/api/v1/computers/midrun/network-policy')).status;
      if (status !== 200) await new Promise((r) => setTimeout(r, 100));
    }
    t.is(status, 200);
  },
);

test.serial('a Store connects by itself, even without connect()', async (t) => {
  const store = new Store({ url: h.redis.url });
  t.teardown(() => store.close());
  let ok = false;
  // Bounded: up to 5 s.
  for (let i = 0; i < 100 && !ok; i++) {
    ok = await store.ping();
    if (!ok) await new Promise((r) => setTimeout(r, 50));
  }
  t.true(ok);
  await store.connect();
  t.is(await store.getComputer('nobody'), undefined);
});

test.serial('the client retries an idempotent request through an outage', async (t) => {
  const { Client, ApiClientError } = await import('../../api/client.js');
  await register(h, 'retry-1');
  const patient = new Client({ baseUrl: h.baseUrl, apiKey: ADMIN_KEY, retries: 50 });
  const impatient = new Client({ baseUrl: h.baseUrl, apiKey: ADMIN_KEY });
  await h.redis.stop();
  const err = await t.throwsAsync(() => impatient.networkPolicy.get('retry-1'), {
    instanceOf: ApiClientError,
  });
  t.is(err?.status, 503);
  t.is(err?.code, 'store_unavailable');
  const pending = patient.networkPolicy.get('retry-1');
  await new Promise((r) => setTimeout(r, 300));
  await h.redis.restart();
  const policy = await pending;
  t.is(policy.computer_id, 'retry-1');
});
