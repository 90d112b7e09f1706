/**
 * Redis Cluster is refused at start (issue 19): egressd's scripts change keys
 * of many hash slots in one step, so `egressd api` and `egressd agent` given
 * a Redis Cluster node (a real `redis-server --cluster-enabled yes`: one node
 * is enough to be one) exit with a message that says to use Sentinel. Neither
 * needs root: both refuse before anything else is set up.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import test from 'ava';
import { Store } from '../../store/store.js';
import { freePort, startRedis, type TestRedis } from '../helpers/redis.js';
import { REPO_ROOT, SCALE } from '../helpers/world.js';

const CLI = path.join(REPO_ROOT, 'dist/cli/main.js');
let cluster: TestRedis;
let dir: string;

test.before(async () => {
  cluster = await startRedis({ tcp: true, args: ['--cluster-enabled', 'yes'] });
  dir = mkdtempSync(path.join(tmpdir(), 'egressd-cluster-'));
});

test.after.always(async () => {
  await cluster?.cleanup();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Runs egressd with `args` (killed by its pid after 20 s): its exit code and stderr. */
async function egressd(args: string[]): Promise<{ code: number | null; stderr: string }> {
  const child = spawn(process.execPath, [CLI, ...args], {
    env: {
      PATH: process.env['PATH'] ?? '/usr/bin:/bin',
      REDIS_URL: cluster.url,
      EGRESSD_ADMIN_KEY: 'cluster-test-admin-key',
      EGRESSD_STATE_DIR: path.join(dir, 'state'),
      // Never reached (the refusal comes first); a directory of the test's own all the same.
      EGRESSD_BPFFS_DIR: path.join(dir, 'bpffs'),
      EGRESSD_LISTEN: `127.0.0.1:${await freePort()}`,
      EGRESSD_METRICS_LISTEN: `127.0.0.1:${await freePort()}`,
      EGRESSD_NODE: 'node-c',
      EGRESSD_LOG_LEVEL: 'silent',
    },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const timer = setTimeout(
    () => child.pid !== undefined && process.kill(child.pid, 'SIGKILL'),
    20_000 * SCALE,
  );
  const [code] = (await once(child, 'exit')) as [number | null];
  clearTimeout(timer);
  return { code, stderr };
}

const REFUSAL =
  /^egressd: the Redis at redis:\/\/127\.0\.0\.1:\d+ runs in cluster mode \(cluster_enabled:1\): Redis Cluster is not supported.*redis\+sentinel:\/\/.*README/m;

test('egressd api refuses a Redis Cluster node and exits with what to use instead', async (t) => {
  const { code, stderr } = await egressd(['api']);
  t.is(code, 1, stderr);
  t.regex(stderr, REFUSAL);
  t.is(stderr.trim().split('\n').length, 1, 'one line');
});

test('egressd agent refuses a Redis Cluster node before it loads anything', async (t) => {
  const { code, stderr } = await egressd(['agent']);
  t.is(code, 1, stderr);
  t.regex(stderr, REFUSAL);
});

test('Store.connect refuses it too (RedisClusterError); a plain Redis is not refused', async (t) => {
  const store = new Store({ url: cluster.url });
  t.teardown(() => store.close());
  await t.throwsAsync(store.connect(), {
    name: 'RedisClusterError',
    message: /use one primary with replicas/i,
  });
  const plain = await startRedis();
  t.teardown(() => plain.cleanup());
  const ok = new Store({ url: plain.url });
  t.teardown(() => ok.close());
  await t.notThrowsAsync(ok.connect());
});
