/**
 * Issue 13: 10,000 event streams of one tenant key opened a Redis client
 * each and took the API down. Here 2,000 streams of one key (its limit
 * raised) are held open while another key's GETs and PUTs must still answer
 * about as fast as before, and Redis must see no more clients than before.
 */
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import test from 'ava';
import { parseOpenFilesLimit } from '../../api/fd-budget.js';
import { type Harness, startHarness } from './harness.js';
import { openStream, type RawStream } from './sse.js';

const STREAMS = 2000;
/** Streams are spread over this many computers, so the one XREAD follows many streams at once. */
const COMPUTERS = 250;
const OPEN_BATCH = 100;

let h: Harness;
const streams: RawStream[] = [];

test.before(async () => {
  h = await startHarness({ ssePerKey: STREAMS, sseMax: STREAMS });
});
test.after.always(async () => {
  for (const s of streams) s.close();
  await h?.close();
});

async function redisClients(): Promise<number> {
  const list = (await h.store.redis.client('LIST')) as string;
  return list.split('\n').filter((line) => line.trim() !== '').length;
}

function p99(samples: number[]): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil(sorted.length * 0.99) - 1)] ?? 0;
}

/** p99 milliseconds of GET, then of PUT (?wait=0): 4 callers, 100 requests each, with `key`. */
async function latencies(key: string, id: string): Promise<{ get: number; put: number }> {
  const run = async (put: boolean) => {
    const samples: number[] = [];
    let n = 0;
    await Promise.all(
      Array.from({ length: 4 }, async () => {
        for (let i = 0; i < 100; i++) {
          const started = performance.now();
          const r = put
            ? await h.call('PUT', `/api/v1/computers/${id}/network-policy?wait=0`, {
                key,
                body: { mode: 'denylist', rules: [{ host: `192.0.2.${n++ % 250}` }] },
              })
            : await h.call('GET', `/api/v1/computers/${id}/network-policy`, { key });
          samples.push(performance.now() - started);
          if (r.status !== (put ? 202 : 200))
            throw new Error(`${put ? 'PUT' : 'GET'}: ${r.status} ${r.text}`);
        }
      }),
    );
    return p99(samples);
  };
  return { get: await run(false), put: await run(true) };
}

test('2,000 streams of one key: one Redis reader for all, and another key is answered as before', async (t) => {
  const limit = parseOpenFilesLimit(readFileSync('/proc/self/limits', 'utf8')) ?? 0;
  // Both ends of every stream live in this process.
  t.true(
    limit >= 2 * STREAMS + 512,
    `this test needs ${2 * STREAMS + 512} open files (ulimit -n is ${limit})`,
  );
  const port = (h.server.address() as AddressInfo).port;

  const key = async (tenant: string) =>
    (await h.call('POST', '/api/v1/keys', { body: { tenant } })).body.data.key;
  const heavy = await key('heavy');
  const light = await key('light');
  const ids = Array.from({ length: COMPUTERS }, (_, i) => `heavy-${i}`);
  for (let i = 0; i < ids.length; i += 50) {
    await Promise.all(
      ids
        .slice(i, i + 50)
        .map((id) =>
          h.store.putComputer(id, { cgroup: `egressd/${id}`, tenant: 'heavy' }, { defaultNode: 'n' }),
        ),
    );
  }
  await h.store.putComputer('light-1', { cgroup: 'egressd/light-1', tenant: 'light' }, { defaultNode: 'n' });

  await latencies(light, 'light-1'); // warm up
  const idle = await latencies(light, 'light-1');
  const clientsBefore = await redisClients();
  const rssBefore = process.memoryUsage().rss;

  const openedAt = performance.now();
  for (let i = 0; i < STREAMS; i += OPEN_BATCH) {
    const batch = await Promise.all(
      Array.from({ length: Math.min(OPEN_BATCH, STREAMS - i) }, (_, j) =>
        openStream(port, `/api/v1/computers/${ids[(i + j) % COMPUTERS]}/network-policy/events/stream`, heavy),
      ),
    );
    streams.push(...batch);
    await Promise.all(batch.map((s) => s.waitFor(/: connected/)));
  }
  const openMs = performance.now() - openedAt;
  const rssAfter = process.memoryUsage().rss;
  t.true(
    streams.every((s) => s.status === 200),
    'every stream opened',
  );
  t.is(h.app.streams.size, STREAMS);
  t.is(h.store.eventFeed().computers, COMPUTERS);
  const clientsAfter = await redisClients();

  const loaded = await latencies(light, 'light-1');

  // One past the process's limit, from another key: 503 streams_at_capacity.
  const full = await h.call('GET', '/api/v1/computers/light-1/network-policy/events/stream', { key: light });
  t.is(full.status, 503);
  t.is(full.body.error.code, 'streams_at_capacity');
  t.is(full.headers.get('retry-after'), '5');

  // Every stream gets its computer's event.
  const sentAt = performance.now();
  await Promise.all(ids.map((id) => h.store.appendEvents(id, [{ computer: id, port: 443, reason: 'rule' }])));
  await Promise.all(streams.map((s) => s.waitFor(/^data: .*"port":443/m, 10_000)));
  const fanoutMs = performance.now() - sentAt;

  const perStreamKiB = (rssAfter - rssBefore) / STREAMS / 1024;
  t.log(
    `open files limit ${limit}; ${STREAMS} streams over ${COMPUTERS} computers opened in ${openMs.toFixed(0)} ms`,
  );
  t.log(
    `RSS ${(rssBefore / 2 ** 20).toFixed(0)} → ${(rssAfter / 2 ** 20).toFixed(0)} MiB: ${perStreamKiB.toFixed(1)} KiB per stream (server and client ends, one process)`,
  );
  for (const kind of ['get', 'put'] as const) {
    t.log(
      `other key's ${kind.toUpperCase()} p99: ${idle[kind].toFixed(1)} ms idle, ${loaded[kind].toFixed(1)} ms with ${STREAMS} streams open`,
    );
  }
  t.log(`Redis clients: ${clientsBefore} before, ${clientsAfter} with ${STREAMS} streams open`);
  t.log(
    `one event to each of ${COMPUTERS} computers reached all ${STREAMS} streams in ${fanoutMs.toFixed(0)} ms`,
  );

  // The feed's one reader connection is the only new client.
  t.true(clientsAfter <= clientsBefore + 1, `Redis clients ${clientsBefore} → ${clientsAfter}`);
  for (const kind of ['get', 'put'] as const) {
    const [was, is] = [idle[kind], loaded[kind]];
    // 10× idle, with a floor for timer noise when idle is a millisecond or two.
    t.true(is < Math.max(10 * was, 20), `${kind} p99 ${is.toFixed(1)} ms vs ${was.toFixed(1)} ms idle`);
    t.true(is < 500, `${kind} p99 ${is.toFixed(1)} ms`);
  }

  for (const s of streams) s.close();
  const deadline = Date.now() + 5000;
  while (h.app.streams.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.is(h.app.streams.size, 0, 'every stream released its slot');
  t.is(h.store.eventFeed().computers, 0);
});
