/**
 * --redis-min-replicas: a change the API acknowledges is on that many
 * replicas first (WAIT, store/connection.ts write()), or answers 503
 * replication_timeout. A real primary and a real replica; freeze() stops
 * the replica (SIGSTOP) so that it confirms nothing.
 */
import test from 'ava';
import { Redis } from 'ioredis';
import { keys } from '../../store/keys.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { type Harness, register, startHarness } from './harness.js';

const TIMEOUT_MS = 400;
const policy = (n: number) => ({ mode: 'allowlist', rules: [{ host: `r${n}.example`, port: 443 }] });

/** A harness on a TCP primary with one replica, and a client of the replica alone. */
async function withReplica(minReplicas: number) {
  const h = await startHarness(
    { redisMinReplicas: minReplicas, redisReplicaTimeoutMs: TIMEOUT_MS },
    {},
    { tcp: true },
  );
  const replica = await startRedis({ replicaOf: h.redis });
  const reader = new Redis(replica.url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  await reader.connect();
  return { h, replica, reader };
}

let one: { h: Harness; replica: TestRedis; reader: Redis };
let none: { h: Harness; replica: TestRedis; reader: Redis };
test.before(async () => {
  [one, none] = await Promise.all([withReplica(1), withReplica(0)]);
});
test.after.always(async () => {
  for (const w of [one, none]) {
    if (!w) continue;
    w.replica.thaw();
    w.reader.disconnect();
    await w.replica.cleanup();
    await w.h.close();
  }
});

/** WAITs the primary has run so far (INFO commandstats). */
async function waits(h: Harness): Promise<number> {
  const info = await h.store.redis.info('commandstats');
  return Number(/cmdstat_wait:calls=(\d+)/.exec(info)?.[1] ?? 0);
}

test.serial('min-replicas 1: the replica has the policy as soon as the PUT is answered', async (t) => {
  const { h, reader } = one;
  await register(h, 'rep-1', { node: 'rep-node' });
  t.is(await reader.hget(keys.computer('rep-1'), 'cgroup'), 'egressd/rep-1');
  for (let n = 1; n <= 5; n++) {
    const r = await h.call('PUT', '/api/v1/computers/rep-1/network-policy?wait=0', { body: policy(n) });
    t.is(r.status, 202);
    t.is(await reader.hget(keys.policy('rep-1'), 'version'), String(r.body.data.version));
    t.regex((await reader.hget(keys.policy('rep-1'), 'rules')) ?? '', new RegExp(`r${n}\\.example`));
  }
});

test.serial('min-replicas 1: every change the API acknowledges is WAITed for', async (t) => {
  const { h, reader } = one;
  const steps: [string, () => Promise<number>][] = [
    [
      'PUT computer',
      async () =>
        (
          await h.call('PUT', '/api/v1/computers/rep-2', {
            body: { cgroup: 'egressd/rep-2', node: 'rep-node' },
          })
        ).status,
    ],
    [
      'PUT policy',
      async () =>
        (await h.call('PUT', '/api/v1/computers/rep-2/network-policy?wait=0', { body: policy(1) })).status,
    ],
    [
      'DELETE policy',
      async () => (await h.call('DELETE', '/api/v1/computers/rep-2/network-policy?wait=0')).status,
    ],
    ['DELETE computer', async () => (await h.call('DELETE', '/api/v1/computers/rep-2')).status],
  ];
  let keyId = '';
  steps.push(
    [
      'POST key',
      async () => {
        const r = await h.call('POST', '/api/v1/keys', { body: { tenant: 'acme' } });
        keyId = r.body.data.id;
        return r.status;
      },
    ],
    ['DELETE key', async () => (await h.call('DELETE', `/api/v1/keys/${keyId}`)).status],
  );
  for (const [name, step] of steps) {
    const before = await waits(h);
    const status = await step();
    t.true(status >= 200 && status < 300, `${name}: ${status}`);
    t.is(await waits(h), before + 1, `${name}: one WAIT`);
  }
  t.is(await reader.exists(keys.computer('rep-2')), 0, 'the replica has the deletion');
  t.is(await reader.exists(keys.apiKey(keyId)), 0, 'and the revocation');
});

test.serial(
  'min-replicas 1, the replica frozen: 503 replication_timeout after the timeout; thawed: writes succeed',
  async (t) => {
    const { h, replica, reader } = one;
    await register(h, 'rep-3', { node: 'rep-node' });
    replica.freeze();
    let stored: number;
    try {
      const started = performance.now();
      const r = await h.call('PUT', '/api/v1/computers/rep-3/network-policy?wait=0', { body: policy(7) });
      const took = performance.now() - started;
      t.is(r.status, 503);
      t.is(r.body.error.code, 'replication_timeout');
      t.is(r.headers.get('retry-after'), '1');
      t.regex(r.body.error.message, /0 of the 1 replicas required \(--redis-min-replicas\)/);
      t.regex(r.body.error.message, /within 400 ms \(--redis-replica-timeout\)/);
      t.regex(r.body.error.message, /may or may not survive/);
      t.regex(r.body.error.message, /INFO replication/);
      t.regex(r.body.error.message, /Repeating the same PUT \(or DELETE\) is safe/);
      t.true(took >= TIMEOUT_MS - 20 && took < TIMEOUT_MS + 1000, `answered in ${Math.round(took)} ms`);
      // Reads do not queue behind the WAIT (the writer has a connection of its own).
      const readStarted = performance.now();
      const pending = h.call('PUT', '/api/v1/computers/rep-3/network-policy?wait=0', { body: policy(8) });
      const got = await h.call('GET', '/api/v1/computers/rep-3/network-policy');
      t.is(got.status, 200);
      t.true(performance.now() - readStarted < TIMEOUT_MS / 2, 'a read is answered while a write WAITs');
      t.is((await pending).status, 503);
      // On the primary all the same: a GET shows it.
      stored = got.body.data.version;
      t.true(stored >= 2);
    } finally {
      replica.thaw();
    }
    const again = await h.call('PUT', '/api/v1/computers/rep-3/network-policy?wait=0', { body: policy(9) });
    t.is(again.status, 202);
    t.true(again.body.data.version > stored);
    t.is(await reader.hget(keys.policy('rep-3'), 'version'), String(again.body.data.version));
  },
);

test.serial('min-replicas 0: no WAIT; a frozen replica changes nothing', async (t) => {
  const { h, replica } = none;
  await register(h, 'rep-4', { node: 'rep-node' });
  replica.freeze();
  try {
    const before = await waits(h);
    const started = performance.now();
    const r = await h.call('PUT', '/api/v1/computers/rep-4/network-policy?wait=0', { body: policy(1) });
    t.is(r.status, 202);
    t.true(performance.now() - started < TIMEOUT_MS / 2);
    t.is(await waits(h), before, 'no WAIT issued');
  } finally {
    replica.thaw();
  }
});
