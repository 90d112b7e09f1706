/**
 * Many hosts for real (issue 19), in the multi-host world of
 * test/helpers/multi-host.ts: three hosts (a network namespace, a cgroup
 * subtree, a bpffs directory and a real `egressd agent` each), two
 * `egressd api` replicas with --redis-min-replicas 1, a Redis primary with
 * one replica, three Sentinels.
 *
 * - Computers on each host, PUTs taking turns over the API replicas: each
 *   host attaches its own computers and no other's (real connects from each
 *   computer's cgroup in its world; the pins of every host's bpffs dir).
 * - A computer moved to another host (its node and cgroup changed through
 *   the API): the old host detaches it, the new one enforces it.
 * - Failover under load: a storm of PUTs over 30 computers on the three
 *   hosts while the Redis primary is killed (SIGKILL). Its replica lags at
 *   that moment (SIGSTOP and its link cut LAG_MS before the kill, then let
 *   go): what the primary acknowledged in that window and no replica had
 *   is what a failover loses, unless --redis-min-replicas made the API wait
 *   for it. The killed server comes back (as a service manager would start
 *   it) and the Sentinels make it the new primary's replica. Afterwards
 *   every acknowledged PUT is stored at its version or a later one, the
 *   stored policy of each computer is enforced on its host (real connects:
 *   the policies differ in the one target they allow), and an agent refused
 *   only versions older than one the API never acknowledged (an agent may
 *   have put in force a change that then answered 503 and was lost). The
 *   time from the kill to each host following again is logged.
 *
 * With MIN_REPLICAS = 0 the storm test fails: the acknowledged PUTs of the
 * lag window are lost (80 of them when tried).
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { Redis } from 'ioredis';
import { keys } from '../../store/keys.js';
import { SCALE, waitFor } from '../helpers/egressd.js';
import { createMultiHost, type Host, type MultiHost } from '../helpers/multi-host.js';
import { ask } from '../helpers/redis.js';
import { runStorm, type StormPut, VARIANTS, variantPolicy } from '../helpers/storm.js';

/** --redis-min-replicas of the API replicas: 1 is what makes the storm test pass. */
const MIN_REPLICAS = 1;
/**
 * The storm: 120 PUTs/s (the issue asks 200: this shared 2-core machine
 * answered only 150-170/s with every part on it) for 20 s over 30 computers
 * (10 per host), the primary killed 5 s in. It goes on until PUTs are
 * acknowledged again for AFTER_RECOVERY_MS, at most MAX_STORM_MS.
 */
const RATE = 120;
const STORM_MS = 20_000;
const MAX_STORM_MS = 45_000;
const KILL_AT_MS = 5_000;
const LAG_MS = 700;
const AFTER_RECOVERY_MS = 4_000;
const PER_HOST = 10;

let mh: MultiHost;
test.before(async () => {
  mh = await createMultiHost({ minReplicas: MIN_REPLICAS });
});
test.after.always(() => mh?.destroy());

let turn = 0;
/** The next API replica: they take turns, request by request. */
const api = () => mh.api(turn++);

type Reply = Awaited<ReturnType<ReturnType<MultiHost['api']>['send']>>;
const data = (r: Reply) =>
  (r.body as { data: Record<string, unknown> & { enforcement: Record<string, unknown> } }).data;

const pinned = (h: Host, id: string) => existsSync(path.join(h.world.pinDir, 'computers', id));
const pinnedOn = (id: string) => mh.hosts.filter((h) => pinned(h, id)).map((h) => h.node);

async function register(id: string, h: Host): Promise<{ path: string; status: number }> {
  const cg = h.makeCgroup(id);
  const r = await api().send('PUT', `/api/v1/computers/${id}`, {
    body: { cgroup: cg.relative, node: h.node },
  });
  return { path: cg.path, status: r.status };
}

/** Real connects from the cgroup in the host's world: the variant's target and the one before it. */
function probeVariant(h: Host, cgroup: string, variant: number): Promise<string[]> {
  const [a1, p1] = VARIANTS[variant % VARIANTS.length] as readonly [string, number];
  const [a2, p2] = VARIANTS[(variant + VARIANTS.length - 1) % VARIANTS.length] as readonly [string, number];
  return h.world.probeResults({ cgroup }, `tcp:${a1}:${p1}`, `tcp:${a2}:${p2}`);
}

type Stored = { version: number; rules: { host: string; port: number }[] };

/** Bounded: the stored policy of `id` is enforced (its agent reported this version in force). */
async function enforcedPolicy(id: string, ms = 20_000): Promise<Stored> {
  let last: Record<string, unknown> | undefined;
  try {
    await waitFor(
      `${id} enforced`,
      async () => {
        const r = await api().send('GET', `/api/v1/computers/${id}/network-policy`);
        if (r.status !== 200) return false;
        last = data(r);
        const e = data(r).enforcement;
        return e['state'] === 'enforced' && e['enforced_version'] === data(r)['version'];
      },
      ms,
    );
  } catch (err) {
    throw new Error(`${(err as Error).message}; last seen: ${JSON.stringify(last)}`);
  }
  return last as unknown as Stored;
}

test.serial('each host attaches only its own computers; PUTs through either API replica', async (t) => {
  for (const h of mh.hosts) {
    for (let k = 0; k < 2; k++) {
      const id = `own-${h.node}-${k}`;
      const { path: cg, status } = await register(id, h);
      t.is(status, 201);
      const variant = k + mh.hosts.indexOf(h);
      const put = await api().send('PUT', `/api/v1/computers/${id}/network-policy`, {
        body: variantPolicy(variant),
      });
      t.is(put.status, 200, put.text);
      t.is(data(put).enforcement['state'], 'enforced');
      t.deepEqual(await probeVariant(h, cg, variant), ['ok', 'EPERM'], `${id} on ${h.node}`);
    }
  }
  for (const h of mh.hosts) {
    for (let k = 0; k < 2; k++) t.deepEqual(pinnedOn(`own-${h.node}-${k}`), [h.node]);
  }
});

test.serial(
  'a computer moved to another host: the old one detaches it, the new one enforces it',
  async (t) => {
    const [a, b] = mh.hosts as [Host, Host];
    const id = 'mover';
    const old = await register(id, a);
    t.is(old.status, 201);
    const put = await api().send('PUT', `/api/v1/computers/${id}/network-policy`, { body: variantPolicy(7) });
    t.is(put.status, 200, put.text);
    t.deepEqual(await probeVariant(a, old.path, 7), ['ok', 'EPERM']);
    t.deepEqual(pinnedOn(id), [a.node]);

    const moved = await register(id, b);
    t.is(moved.status, 200);
    await waitFor('moved: pinned on the new host alone', () => pinnedOn(id).join() === b.node);
    const p = await enforcedPolicy(id);
    t.true(p.version > (data(put)['version'] as number), 'a move is a new version');
    t.deepEqual(await probeVariant(b, moved.path, 7), ['ok', 'EPERM'], 'the new host enforces the policy');
    // The old cgroup is still under host-a's sandbox root, which nothing covers now: no network at all.
    t.deepEqual(await probeVariant(a, old.path, 7), ['EPERM', 'EPERM'], 'the old host no longer lets it out');
    t.false(a.log.some((l) => l.computer === id && /could not enforce/.test(l.msg)));
    t.true(a.log.some((l) => l.computer === id && l.msg === 'detached'));
  },
);

const portOf = (url: string) => Number(/:(\d+)$/.exec(url)?.[1]);

/**
 * The schedule of the failover: the replica falls behind, the primary dies, the Sentinels promote the
 * replica, the old primary comes back and becomes the new one's replica.
 */
function failover(t: { log: (...a: unknown[]) => void }, ids: string[]) {
  const times: {
    lagAt?: number;
    killedAt?: number;
    snapshotAt?: number;
    promotedAt?: number;
    replicatingAt?: number;
  } = {};
  /** Each computer's policy version on the replica once it has all it will get of the old primary. */
  const survived = new Map<string, number>();
  let started = false;
  let done: Promise<void> = Promise.resolve();
  const primaryPort = portOf(mh.primary.url);
  const replicaPort = portOf(mh.replica.url);
  const run = async () => {
    times.lagAt = Date.now();
    mh.replica.freeze();
    try {
      const killed = await ask({ port: primaryPort }, 'CLIENT KILL TYPE replica', /:(\d+)/);
      if (killed !== '1') throw new Error(`CLIENT KILL TYPE replica answered ${killed}`);
      await new Promise((r) => setTimeout(r, LAG_MS));
      times.killedAt = Date.now();
      await mh.primary.stop(); // SIGKILL, by its pid
    } finally {
      mh.replica.thaw();
    }
    // What survives the failover: the replica's data once its link is down (it has read what the
    // old primary had sent) and before it is promoted (nothing else writes to it).
    const link = () => ask({ port: replicaPort }, 'INFO replication', /master_link_status:(\w+)/);
    await waitFor('the replica notices the kill', async () => (await link()) === 'down', 5_000);
    const reader = new Redis({
      port: replicaPort,
      host: '127.0.0.1',
      lazyConnect: true,
      maxRetriesPerRequest: 1,
    });
    try {
      await reader.connect();
      const versions = await Promise.all(ids.map((id) => reader.hget(keys.policy(id), 'version')));
      times.snapshotAt = Date.now();
      if ((await link()) !== 'down' || (await mh.sentinels.primaryPort()) === replicaPort) {
        throw new Error('the replica was promoted before its data was read');
      }
      for (const [i, id] of ids.entries()) survived.set(id, Number(versions[i] ?? 0));
    } finally {
      reader.disconnect();
    }
    // Every Sentinel names the new primary before the old one comes back: a Sentinel that still named
    // the old address would send clients to it (a primary again, without what followed, until demoted).
    const named = async (port: number) =>
      Number(await ask({ port }, 'SENTINEL GET-MASTER-ADDR-BY-NAME egressd', /\$\d+\r\n(\d+)\r\n$/));
    await waitFor(
      'every Sentinel names the promoted replica',
      async () => (await Promise.all(mh.sentinels.ports.map(named))).every((p) => p === replicaPort),
      30_000,
    );
    times.promotedAt = Date.now();
    await mh.primary.restart();
    // The Sentinels make it a replica of the new primary (some seconds after it answers), which syncs
    // it fully (after repl-diskless-sync-delay, 5 s by default): only an online replica confirms a WAIT.
    const state = () => ask({ port: replicaPort }, 'INFO replication', /slave0:[^\r]*state=(\w+)/);
    await waitFor('the old primary replicates the new one', async () => (await state()) === 'online', 60_000);
    times.replicatingAt = Date.now();
    const since = Object.entries(times).map(([k, v]) => `${k} ${(v ?? 0) - (times.killedAt ?? 0)}`);
    t.log(`failover, ms from the kill: ${since.join(', ')}`);
  };
  return {
    times,
    survived,
    tick: (elapsed: number) => {
      if (started || elapsed < KILL_AT_MS - LAG_MS) return;
      started = true;
      done = run();
      done.catch(() => {});
    },
    done: () => done,
  };
}

test.serial(
  'failover under a storm of PUTs: no acknowledged change lost, every host follows again',
  async (t) => {
    t.timeout(240_000 * SCALE);
    const computers: { id: string; host: Host; cgroup: string }[] = [];
    for (let k = 0; k < PER_HOST; k++) {
      for (const h of mh.hosts) {
        const id = `storm-${h.node}-${k}`;
        const r = await register(id, h);
        t.is(r.status, 201);
        computers.push({ id, host: h, cgroup: r.path });
      }
    }
    const f = failover(
      t,
      computers.map((c) => c.id),
    );
    // Each host's first computer is watched while the storm runs: when does it enforce again?
    const samples: { id: string; at: number; enforced: number | null }[] = [];
    let storming = true;
    const watch = (async () => {
      while (storming) {
        if (f.times.killedAt !== undefined) {
          for (const c of computers.slice(0, mh.hosts.length)) {
            const r = await api()
              .send('GET', `/api/v1/computers/${c.id}/network-policy`)
              .catch(() => undefined);
            if (r?.status === 200) {
              samples.push({
                id: c.id,
                at: Date.now(),
                enforced: data(r).enforcement['enforced_version'] as number | null,
              });
            }
          }
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
    const storm = await runStorm({
      origins: mh.apis.map((a) => a.origin),
      computers: computers.map((c) => c.id),
      rate: RATE,
      minMs: STORM_MS,
      maxMs: MAX_STORM_MS,
      // Until PUTs have been acknowledged again for AFTER_RECOVERY_MS.
      until: (puts) => {
        const since = f.times.replicatingAt;
        if (since === undefined) return false;
        const first = puts.find((p) => p.sentAt > since && p.version !== undefined);
        return first !== undefined && Date.now() - first.sentAt > AFTER_RECOVERY_MS;
      },
      onTick: f.tick,
    });
    storming = false;
    await watch;
    await f.done();
    const { killedAt = 0, replicatingAt = 0 } = f.times;
    const acked = storm.puts.filter((p) => p.version !== undefined);
    const byStatus = new Map<string, number>();
    for (const p of storm.puts) {
      const k = `${p.status}${p.code ? ` ${p.code}` : ''}`;
      byStatus.set(k, (byStatus.get(k) ?? 0) + 1);
    }
    const seconds = (storm.endedAt - storm.startedAt) / 1000;
    t.log(
      `storm: ${storm.puts.length} PUTs in ${seconds.toFixed(1)} s (${(storm.puts.length / seconds).toFixed(0)}/s, ${storm.skipped.length} skipped at the in-flight cap), ` +
        `${acked.length} acknowledged; ${JSON.stringify(Object.fromEntries(byStatus))}`,
    );
    // A timeline, a second a line from the kill: the answers of the PUTs sent in it.
    const timeline = new Map<number, Map<string, number>>();
    for (const p of storm.puts) {
      const second = Math.floor((p.sentAt - killedAt) / 1000);
      const row = timeline.get(second) ?? new Map<string, number>();
      const k = `${p.status}${p.code ? ` ${p.code}` : ''}`;
      row.set(k, (row.get(k) ?? 0) + 1);
      timeline.set(second, row);
    }
    t.log([...timeline].map(([s, row]) => `${s} s: ${JSON.stringify(Object.fromEntries(row))}`).join('\n'));
    // No acknowledged PUT lost in the failover: what the old primary acknowledged is on the replica that
    // the Sentinels promoted (every PUT answered before the snapshot was answered by the old primary).
    const lostInFailover = acked.filter(
      (p) => p.doneAt <= (f.times.snapshotAt ?? 0) && (f.survived.get(p.computer) ?? 0) < (p.version ?? 0),
    );
    t.log(`acknowledged PUTs the promoted replica did not have: ${lostInFailover.length}`);
    t.deepEqual(
      lostInFailover.map(
        (p) => `${p.computer}@${p.version} (answered ${p.doneAt - killedAt} ms from the kill)`,
      ),
      [],
      'acknowledged PUTs lost in the failover',
    );
    t.is(f.survived.size, computers.length);
    // Every acknowledged PUT is stored at its version or a later one.
    const storedVersion = new Map<string, number>();
    for (const c of computers) {
      const r = await api().send('GET', `/api/v1/computers/${c.id}/network-policy`);
      t.is(r.status, 200, r.text);
      storedVersion.set(c.id, data(r)['version'] as number);
    }
    const lost = acked.filter((p) => (storedVersion.get(p.computer) ?? -1) < (p.version ?? 0));
    t.log(`acknowledged PUTs stored at an older version after the failover: ${lost.length}`);
    t.deepEqual(
      lost.map((p: StormPut) => `${p.computer}@${p.version} (sent ${p.sentAt - killedAt} ms from the kill)`),
      [],
      'acknowledged PUTs lost in the failover',
    );
    // While the new primary has no replica, each change waits for --redis-replica-timeout, one after the
    // other in each API process (README): the in-flight cap skips PUTs then. Before, few may be
    // skipped (this machine is shared: a busy moment delays the API).
    const skippedBefore = storm.skipped.filter((at) => at < (f.times.lagAt ?? 0)).length;
    t.true(
      skippedBefore <= (RATE * (KILL_AT_MS - LAG_MS)) / 1000 / 10,
      `the machine carried ${RATE} PUTs/s before the failover (${skippedBefore} skipped)`,
    );
    t.true(
      acked.some((p) => p.sentAt < killedAt - LAG_MS),
      'PUTs acknowledged before the failover',
    );
    const after = acked.filter((p) => p.sentAt > replicatingAt);
    t.true(after.length > 0, 'and again once the old primary replicates the new one');

    // And its host enforces what is stored.
    const stored = new Map<string, Stored>();
    const notEnforced: string[] = [];
    for (const c of computers) {
      await enforcedPolicy(c.id, 30_000).then(
        (p) => stored.set(c.id, p),
        (err: Error) => notEnforced.push(err.message),
      );
    }
    t.deepEqual(notEnforced, [], 'computers whose stored policy is not enforced');

    // The stored policy, which differs from the one before it in the one target it allows, is in force on its host.
    for (const c of computers) {
      const p = stored.get(c.id);
      if (!p) continue;
      const variant = VARIANTS.findIndex(([a, port]) => a === p.rules[0]?.host && port === p.rules[0]?.port);
      t.deepEqual(
        await probeVariant(c.host, c.cgroup, variant),
        ['ok', 'EPERM'],
        `${c.id} on ${c.host.node}`,
      );
      t.deepEqual(pinnedOn(c.id), [c.host.node]);
    }

    // No host put an older version in force after a newer one: an agent refuses (and counts, and logs)
    // an older version, and the versions it kept were never acknowledged (a PUT the API answered 503).
    const ackedVersions = new Set(acked.map((p) => `${p.computer}@${p.version}`));
    let regressions = 0;
    for (const h of mh.hosts) {
      const m = await h.metrics();
      const counted = [...m]
        .filter(([k]) => k.startsWith('egressd_version_regressions_total{'))
        .reduce((s, [, v]) => s + v, 0);
      const refusals = h.log.filter((l) => /refused an older version/.test(l.msg));
      t.is(counted, refusals.length, `${h.node}: the counter and the log agree`);
      for (const r of refusals)
        t.false(ackedVersions.has(`${r.computer}@${r.kept}`), `${h.node} kept an acknowledged version`);
      regressions += counted;
    }
    t.log(`versions refused as older (kept a newer, unacknowledged one) on all hosts: ${regressions}`);

    // From the kill to each host following again.
    const figures: string[] = [];
    let worst = 0;
    for (const [i, h] of mh.hosts.entries()) {
      const following = h.log.find(
        (l) => l.time > killedAt && l.msg === 'agent status' && l.to === 'following',
      );
      const watched = computers[i]?.id;
      const postKill = acked
        .filter((p) => p.computer === watched && p.sentAt > killedAt)
        .map((p) => p.version ?? 0);
      const enforcedAgain = samples.find(
        (s) => s.id === watched && s.enforced !== null && postKill.some((v) => (s.enforced ?? 0) >= v),
      );
      t.truthy(following, `${h.node} logged no return to following after the kill`);
      const ms = (following?.time ?? Number.NaN) - killedAt;
      worst = Math.max(worst, ms);
      figures.push(
        `${h.node}: following ${ms} ms, an acknowledged post-kill PUT enforced ${enforcedAgain ? enforcedAgain.at - killedAt : 'not seen'} ms`,
      );
    }
    t.log(`from the kill: ${figures.join('; ')}; all hosts following after ${worst} ms`);
  },
);
