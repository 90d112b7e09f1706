/**
 * A Redis that comes back empty does not unlock computers silently (issue
 * 19): the real `egressd agent` (its own process, state directory and
 * metrics) follows a redis-server without persistence; that Redis is killed
 * and an empty one started at the same port. The agent keeps every policy
 * in force (real connects), applies and acknowledges nothing from the empty
 * store, and says `store_lost` in its node status, its metric and its log,
 * also after a restart; once the policies are PUT again and an operator
 * accepts the store, it follows it (and detaches what the new store lacks).
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import { ADMIN_KEY, type Harness, startHarness } from '../api/harness.js';
import { CLI, type EgressdProcess, freePort, launch, waitFor } from '../helpers/egressd.js';
import { parsePrometheus } from '../helpers/prometheus.js';
import { createWorld, type World } from '../helpers/world.js';

const run = promisify(execFile);
const NODE = 'node-lost';
let world: World;
let api: Harness;
let agent: EgressdProcess | undefined;
let stateDir: string;
let metricsPort: number;

async function startAgent(): Promise<EgressdProcess> {
  return launch({
    args: [CLI, 'agent'],
    env: {
      PATH: process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin',
      REDIS_URL: api.redis.url,
      EGRESSD_NODE: NODE,
      EGRESSD_STATE_DIR: stateDir,
      EGRESSD_BPFFS_DIR: world.pinDir,
      EGRESSD_CGROUP_ROOTS: world.cgroupRelative(),
      EGRESSD_METRICS_LISTEN: `127.0.0.1:${metricsPort}`,
      EGRESSD_DNS_UPSTREAM: '127.0.0.1:9',
      EGRESSD_DNS_PORTS: '46000-46099',
      EGRESSD_LOG_LEVEL: 'info',
      EGRESSD_LOG_FORMAT: 'json',
    },
  });
}

test.before(async () => {
  world = await createWorld();
  stateDir = mkdtempSync(path.join(tmpdir(), 'egressd-state-'));
  metricsPort = await freePort();
  api = await startHarness({ defaultNode: NODE }, {}, { tcp: true, persistence: false });
  agent = await startAgent();
});

test.after.always(async () => {
  await agent?.stop();
  await api?.close();
  await world?.destroy();
  if (stateDir) rmSync(stateDir, { recursive: true, force: true });
});

/** `egressd ARGS` against the test's API: its stdout (rejects on a non-zero exit). */
async function cli(...args: string[]): Promise<string> {
  const { stdout } = await run(process.execPath, [CLI, ...args], {
    env: { PATH: process.env['PATH'], EGRESSD_API: api.baseUrl, EGRESSD_API_KEY: ADMIN_KEY },
  });
  return stdout;
}

async function agentMetric(name: string): Promise<number | undefined> {
  const r = await fetch(`http://127.0.0.1:${metricsPort}/metrics`).catch(() => undefined);
  return r?.ok ? parsePrometheus(await r.text()).get(name) : undefined;
}

async function nodeStore() {
  const r = await api.call('GET', '/api/v1/nodes');
  return r.body.data?.find((n: { node: string }) => n.node === NODE)?.store;
}

async function put(id: string, cgroup: string, policy: object, wait = 5000) {
  const c = await api.call('PUT', `/api/v1/computers/${id}`, { body: { cgroup } });
  if (c.status !== 201 && c.status !== 200) throw new Error(`register ${id}: ${c.status} ${c.text}`);
  return api.call('PUT', `/api/v1/computers/${id}/network-policy?wait=${wait}`, { body: policy });
}

const ISOLATED = { mode: 'isolated' };
const ONLY_2 = { mode: 'allowlist', rules: [{ host: '192.0.2.2', port: 80, protocol: 'tcp' }] };
const probe = (cg: string) => world.probeResults({ cgroup: cg }, 'tcp:192.0.2.1:80', 'tcp:192.0.2.2:80');

test.serial(
  'an empty Redis: computers stay enforced and the store is reported lost, also by a restarted agent, until PUT again and accepted',
  async (t) => {
    const kept = world.makeCgroup('kept');
    const dropped = world.makeCgroup('dropped');
    t.is((await put('kept', kept.relative, ISOLATED)).status, 200);
    t.is((await put('dropped', dropped.relative, ONLY_2)).status, 200);
    t.deepEqual(await probe(kept.path), ['EPERM', 'EPERM']);
    t.deepEqual(await probe(dropped.path), ['EPERM', 'ok']);
    await waitFor('node status', async () => (await nodeStore())?.state === 'following');
    const lostId = (await nodeStore()).id as string;
    t.regex(lostId, /^[0-9a-f]{32}$/);
    t.is((await api.call('GET', '/api/v1/store')).body.data.id, lostId, 'the agent made the identity');

    // Redis dies and an empty one takes its port.
    await api.redis.restart();
    await waitFor('store lost in the node status', async () => (await nodeStore())?.state === 'lost');
    t.is((await api.call('GET', '/api/v1/store')).body.data.id, null, 'the new Redis holds no identity');
    t.like(await nodeStore(), { state: 'lost', id: lostId, found: null });
    t.deepEqual(await probe(kept.path), ['EPERM', 'EPERM'], 'still isolated');
    t.deepEqual(await probe(dropped.path), ['EPERM', 'ok'], 'still its allowlist');
    t.is(await agentMetric('egressd_store_lost'), 1);
    const ready = await api.call('GET', '/readyz');
    t.is(ready.status, 200);
    t.is(ready.body.store_lost, 1);
    const errors = () =>
      (agent?.stdout() ?? '')
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as { level: number; msg: string })
        .filter((l) => l.level === 50 && /holds no store identity/.test(l.msg));
    t.is(errors().length, 1, 'logged once');
    t.regex(errors()[0]?.msg ?? '', /PUT every computer and its policy again.*egressd store accept/);

    // The control plane PUTs the policies again (the new store's versions start at 1): nothing is
    // applied or acknowledged while the store is lost, so the PUT is not confirmed.
    const again = await put('kept', kept.relative, ONLY_2, 1500);
    t.is(again.status, 202, again.text);
    t.is(again.body.data.enforcement.state, 'pending');
    t.deepEqual(await probe(kept.path), ['EPERM', 'EPERM'], 'the new store is not followed');
    t.is(errors().length, 1, 'checked again, logged no more');

    // A restarted agent remembers the store it followed (its state directory).
    await agent?.stop();
    agent = await startAgent();
    await waitFor('restarted agent says lost', async () => (await agentMetric('egressd_store_lost')) === 1);
    t.like(await nodeStore(), { state: 'lost', id: lostId });
    t.deepEqual(await probe(kept.path), ['EPERM', 'EPERM']);
    t.deepEqual(await probe(dropped.path), ['EPERM', 'ok']);
    t.is(errors().length, 1, 'the restarted agent logs it once too');
    const status = await api.call('GET', '/api/v1/store');
    t.like(status.body.data.nodes_lost, [{ node: NODE, lost_id: lostId }]);
    t.not(status.body.data.id, lostId);

    // The operator looks, then accepts (egressd store): the agent follows the new store, applies
    // its policies and detaches the rest.
    const shown = await cli('store', 'status');
    t.regex(shown, new RegExp(`${NODE}: followed ${lostId}, found no identity`));
    t.regex(shown, /then: egressd store accept/);
    const accepted = JSON.parse(await cli('store', 'accept', '--json')) as { id: string; accepted: string[] };
    t.deepEqual(accepted.accepted, [lostId]);
    const newId = accepted.id;
    await waitFor('following the new store', async () => (await nodeStore())?.id === newId);
    t.like(await nodeStore(), { state: 'following', id: newId });
    await waitFor('kept enforced', async () => {
      const p = await api.call('GET', '/api/v1/computers/kept/network-policy');
      const e = p.body.data?.enforcement;
      return e?.state === 'enforced' && e.enforced_version === p.body.data.version;
    });
    t.deepEqual(await probe(kept.path), ['EPERM', 'ok'], "the new store's policy");
    // Not in the new store: detached, as accepted (below the sandbox root the guard then refuses all).
    t.deepEqual(await probe(dropped.path), ['EPERM', 'EPERM'], 'its allowlist is gone');
    t.true(
      (agent?.stdout() ?? '').split('\n').some((l) => /"computer":"dropped".*"msg":"detached"/.test(l)),
      'the agent detached it',
    );
    t.is(await agentMetric('egressd_store_lost'), 0);
    t.is((await api.call('GET', '/readyz')).body.store_lost, 0);
    t.is((await api.call('POST', '/api/v1/store/accept')).status, 409, 'nothing more to accept');

    // And it follows changes again.
    t.is((await put('kept', kept.relative, ISOLATED)).status, 200);
    t.deepEqual(await probe(kept.path), ['EPERM', 'EPERM']);
  },
);
