/**
 * `egressd api` as a process, the API's one serving path: with
 * EGRESSD_API_WORKERS=2 two worker processes serve one port, a killed one is
 * replaced, SIGTERM ends them all; a worker that cannot listen fails the
 * start with its own message; the old EGRESSD_API_LISTEN is refused.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { readdirSync, readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import path from 'node:path';
import test from 'ava';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { REPO_ROOT } from '../helpers/world.js';

const CLI = path.join(REPO_ROOT, 'dist/cli/main.js');
const KEY = 'serve-test-admin-key';
const SCALE = Number(process.env['EGRESSD_TEST_TIMEOUT_SCALE'] ?? 1);

let redis: TestRedis;

test.before(async () => {
  redis = await startRedis();
});

test.after.always(async () => {
  await redis?.cleanup();
});

async function listening(): Promise<Server> {
  const s = createServer().listen(0, '127.0.0.1');
  await once(s, 'listening');
  return s;
}

async function freePort(): Promise<number> {
  const s = await listening();
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

/** The pids of a process's children that are API workers (`main.js api`). */
function workersOf(pid: number): number[] {
  try {
    return readdirSync(`/proc/${pid}/task`)
      .flatMap((task) => readFileSync(`/proc/${pid}/task/${task}/children`, 'utf8').split(' '))
      .filter(Boolean)
      .map(Number)
      .filter((p) => /main\.js\0api\0$/.test(readFileSync(`/proc/${p}/cmdline`, 'utf8')));
  } catch {
    return [];
  }
}

async function waitFor(what: string, check: () => boolean | Promise<boolean>, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms * SCALE;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms * SCALE} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function egressdApi(env: Record<string, string>): { child: ChildProcess; output: () => string } {
  const child = spawn(process.execPath, [CLI, 'api'], {
    env: {
      PATH: process.env['PATH'] ?? '',
      REDIS_URL: redis.url,
      EGRESSD_ADMIN_KEY: KEY,
      EGRESSD_LOG_LEVEL: 'info',
      EGRESSD_LOG_FORMAT: 'json',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout?.on('data', (d) => {
    output += d;
  });
  child.stderr?.on('data', (d) => {
    output += d;
  });
  return { child, output: () => output };
}

async function exitOf(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
  const [code] = await once(child, 'exit');
  return code as number | null;
}

test.serial(
  'EGRESSD_API_WORKERS=2: two workers serve the port; a killed one is replaced; SIGTERM ends them all',
  async (t) => {
    const port = await freePort();
    const { child, output } = egressdApi({ EGRESSD_LISTEN: `127.0.0.1:${port}`, EGRESSD_API_WORKERS: '2' });
    t.teardown(() => {
      for (const p of [...workersOf(child.pid!), child.pid!]) {
        try {
          process.kill(p, 'SIGKILL');
        } catch {}
      }
    });
    await waitFor('egressd api running', () => output().includes('egressd api: running'));
    const first = workersOf(child.pid!);
    t.is(first.length, 2, output());
    const headers = { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' };
    const put = await fetch(`http://127.0.0.1:${port}/api/v1/computers/served`, {
      method: 'PUT',
      headers,
      body: JSON.stringify({ cgroup: 'egressd/served', node: 'n1' }),
    });
    t.is(put.status, 201);

    process.kill(first[0]!, 'SIGKILL');
    await waitFor('another worker', () => {
      const now = workersOf(child.pid!);
      return now.length === 2 && !now.includes(first[0]!);
    });
    await waitFor(
      'the new worker listening',
      () => (output().match(/"msg":"API listening"/g) ?? []).length >= 4,
    );
    for (let i = 0; i < 4; i++) {
      const r = await fetch(`http://127.0.0.1:${port}/api/v1/computers/served`, { headers });
      t.is(r.status, 200);
    }
    t.regex(output(), /API worker died; starting another/);

    const workers = workersOf(child.pid!);
    child.kill('SIGTERM');
    t.is(await exitOf(child), 0, output());
    await waitFor('the workers ended', () =>
      workers.every((p) => {
        try {
          process.kill(p, 0);
          return false;
        } catch {
          return true;
        }
      }),
    );
  },
);

test.serial('a worker that cannot listen fails the start with its own message, once', async (t) => {
  const busy = await listening();
  t.teardown(() => busy.close());
  const listen = `127.0.0.1:${(busy.address() as { port: number }).port}`;
  const { child, output } = egressdApi({
    EGRESSD_LISTEN: listen,
    EGRESSD_API_WORKERS: '2',
    EGRESSD_LOG_LEVEL: 'warn',
  });
  t.is(await exitOf(child), 1);
  const lines = output()
    .split('\n')
    .filter((l) => l.startsWith('egressd:'));
  t.deepEqual(lines, [
    `egressd: cannot listen on ${listen} (EADDRINUSE): choose another --listen / EGRESSD_LISTEN`,
  ]);
});

test.serial('EGRESSD_API_LISTEN is refused at start, saying what to rename', async (t) => {
  const { child, output } = egressdApi({ EGRESSD_API_LISTEN: '127.0.0.1:8081' });
  t.is(await exitOf(child), 1);
  t.is(output().trim(), 'egressd: EGRESSD_API_LISTEN is no longer read: rename it to EGRESSD_LISTEN');
});
