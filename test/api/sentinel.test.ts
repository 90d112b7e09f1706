/**
 * --redis redis+sentinel://...: the API through three real Sentinels to a
 * real primary with one real replica. PUT and GET work; after the primary
 * is killed (SIGKILL) and the Sentinels promote the replica, the API answers
 * again with what was replicated before the kill, and its writes go to the
 * new primary.
 */
import test from 'ava';
import { Redis } from 'ioredis';
import { keys } from '../../store/keys.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { startSentinels, type TestSentinels } from '../helpers/sentinel.js';
import { type Harness, register, startHarness } from './harness.js';

const policy = (n: number) => ({ mode: 'allowlist', rules: [{ host: `s${n}.example`, port: 443 }] });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let h: Harness | undefined;
let replica: TestRedis | undefined;
let sentinels: TestSentinels | undefined;
let reader: Redis | undefined;

test.after.always(async () => {
  reader?.disconnect();
  await h?.close();
  await sentinels?.cleanup();
  await replica?.cleanup();
});

test.serial(
  'through Sentinel: PUT and GET, then a failover keeps what was replicated and takes new writes',
  async (t) => {
    t.timeout(90_000);
    h = await startHarness({}, {}, { tcp: true }, async (primary) => {
      replica = await startRedis({ replicaOf: primary });
      sentinels = await startSentinels(primary);
      return sentinels.url;
    });
    t.regex(
      h.config.redisUrl,
      /^redis\+sentinel:\/\/127\.0\.0\.1:\d+,127\.0\.0\.1:\d+,127\.0\.0\.1:\d+\/egressd$/,
    );
    const primaryPort = Number(/:(\d+)$/.exec(h.redis.url)?.[1]);
    const replicaPort = Number(/:(\d+)$/.exec(replica!.url)?.[1]);
    t.is(await sentinels!.primaryPort(), primaryPort);

    await register(h, 'sent-1', { node: 'sent-node' });
    const put = await h.call('PUT', '/api/v1/computers/sent-1/network-policy?wait=0', { body: policy(1) });
    t.is(put.status, 202);
    const version = put.body.data.version;
    const got = await h.call('GET', '/api/v1/computers/sent-1/network-policy');
    t.is(got.status, 200);
    t.is(got.body.data.version, version);

    // The replica has every write of the store's connection before the primary dies.
    t.is(await h.store.redis.wait(1, 5000), 1);
    reader = new Redis(replica!.url, { lazyConnect: true, maxRetriesPerRequest: 1 });
    await reader.connect();
    t.is(await reader.hget(keys.policy('sent-1'), 'version'), String(version));

    const killed = Date.now();
    await h.redis.stop(); // SIGKILL, by the primary's pid

    // Bounded: up to 20 s for the Sentinels to promote the replica and the API to answer from it.
    let after: Awaited<ReturnType<Harness['call']>> | undefined;
    const statuses = new Set<number>();
    while (Date.now() - killed < 20_000) {
      after = await h.call('GET', '/api/v1/computers/sent-1/network-policy');
      statuses.add(after.status);
      if (after.status === 200) break;
      await sleep(200);
    }
    t.is(after?.status, 200, `no answer within 20 s of the kill (statuses: ${[...statuses].join(', ')})`);
    t.is(after?.body.data.version, version);
    t.regex(JSON.stringify(after?.body.data.rules), /"s1\.example"/);
    t.log(`the API answered from the new primary ${Date.now() - killed} ms after the kill`);
    t.is(await sentinels!.primaryPort(), replicaPort);
    t.regex(await reader.info('replication'), /role:master/);

    // Writes go to the new primary: a change made now is there.
    const next = await h.call('PUT', '/api/v1/computers/sent-1/network-policy?wait=0', { body: policy(2) });
    t.is(next.status, 202);
    t.true(next.body.data.version > version);
    t.is(await reader.hget(keys.policy('sent-1'), 'version'), String(next.body.data.version));
    t.regex((await reader.hget(keys.policy('sent-1'), 'rules')) ?? '', /s2\.example/);
    const again = await h.call('GET', '/api/v1/computers/sent-1/network-policy');
    t.is(again.body.data.version, next.body.data.version);
  },
);
