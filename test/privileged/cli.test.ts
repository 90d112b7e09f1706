/**
 * The real `egressd` process and its client commands, against a real
 * redis-server, BPF and the test world: one-command use, `run`, readable
 * and JSON output, errors, and kill -9 of the agent while a sandboxed
 * process keeps connecting.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import { parsePrometheus } from '../helpers/prometheus.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { createWorld, PROBE_PATH, REPO_ROOT, type World } from '../helpers/world.js';

const execFileAsync = promisify(execFile);
const CLI = path.join(REPO_ROOT, 'dist/daemon/src/cli.js');
const ADMIN_KEY = 'cli-test-admin-key-0123456789';

let world: World;
let redis: TestRedis;
let stateDir: string;
let port: number;
let egressd: ChildProcess | undefined;

async function freePort(): Promise<number> {
  const s = createServer().listen(0, '127.0.0.1');
  await new Promise((r) => s.once('listening', r));
  const p = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return p;
}

function env(): NodeJS.ProcessEnv {
  return {
    ...process.env,
    REDIS_URL: redis.url,
    EGRESSD_ADMIN_KEY: ADMIN_KEY,
    EGRESSD_API_KEY: ADMIN_KEY,
    EGRESSD_STATE_DIR: stateDir,
    EGRESSD_BPFFS_DIR: world.pinDir,
    EGRESSD_LISTEN: `127.0.0.1:${port}`,
    EGRESSD_API: `http://127.0.0.1:${port}`,
    EGRESSD_NODE: 'cli-node',
    EGRESSD_CGROUP_ROOTS: world.cgroupRelative(),
    EGRESSD_LOG_LEVEL: 'warn',
    // Never the host's resolver: nothing in these tests asks DNS, and nothing may leave this host.
    EGRESSD_DNS_UPSTREAM: '127.0.0.1:9',
  };
}

/** Starts `egressd all` and resolves once the API answers. */
async function startEgressd(): Promise<ChildProcess> {
  const child = spawn(process.execPath, [CLI, 'all'], { env: env(), stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d) => {
    stderr += d;
  });
  // Slower machines (a VM under emulation) scale every wait here.
  const deadline = Date.now() + 15_000 * Number(process.env['EGRESSD_TEST_TIMEOUT_SCALE'] ?? 1);
  for (;;) {
    if (child.exitCode !== null) throw new Error(`egressd exited (${child.exitCode}): ${stderr}`);
    try {
      const r = await fetch(`http://127.0.0.1:${port}/readyz`);
      if (r.status === 200 && stderr.includes('running')) return child;
    } catch {}
    if (Date.now() > deadline) {
      if (child.pid !== undefined && child.exitCode === null) process.kill(child.pid, 'SIGKILL');
      throw new Error(`egressd did not become ready: ${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function stopEgressd(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  const child = egressd;
  egressd = undefined;
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  if (child.pid !== undefined) process.kill(child.pid, signal);
  await exited;
}

async function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await execFileAsync(process.execPath, [CLI, ...args], { env: env() });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: e.code ?? 1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

test.before(async () => {
  world = await createWorld();
  redis = await startRedis();
  stateDir = mkdtempSync(path.join(tmpdir(), 'egressd-cli-'));
  port = await freePort();
  egressd = await startEgressd();
});

test.after.always(async () => {
  await stopEgressd('SIGKILL');
  await redis?.cleanup();
  if (stateDir) rmSync(stateDir, { recursive: true, force: true });
  await world?.destroy();
});

test.serial('computers add, policy set/get/reset, readable and JSON output', async (t) => {
  const cg = world.makeCgroup('cli-1');
  const add = await cli('computers', 'add', 'cli-1', '--cgroup', cg.relative);
  t.is(add.code, 0, add.stderr);
  t.regex(add.stdout, /cli-1: cgroup .* on node cli-node/);
  const set = await cli(
    'policy',
    'set',
    'cli-1',
    '--mode',
    'allowlist',
    '--rule',
    '192.0.2.1:80/tcp',
    '--rule',
    '[2001:db8::1]:443',
  );
  t.is(set.code, 0, set.stderr);
  t.regex(set.stdout, /mode: +allowlist/);
  t.regex(set.stdout, /enforced/);
  t.deepEqual(
    await world.probeResults(
      { cgroup: cg.path },
      'tcp:192.0.2.1:80',
      'tcp:192.0.2.1:443',
      'tcp:[2001:db8::1]:443',
    ),
    ['ok', 'EPERM', 'ok'],
  );
  const get = await cli('policy', 'get', 'cli-1', '--json');
  t.is(get.code, 0);
  const view = JSON.parse(get.stdout);
  t.is(view.mode, 'allowlist');
  t.deepEqual(view.rules, [
    { host: '192.0.2.1', port: 80, protocol: 'tcp' },
    { host: '2001:db8::1', port: 443, protocol: 'any' },
  ]);
  const list = await cli('computers', 'list');
  t.regex(list.stdout, /cli-1 +cli-node +allowlist/);
  t.is((await cli('policy', 'reset', 'cli-1')).code, 0);
  t.deepEqual(await world.probeResults({ cgroup: cg.path }, 'tcp:192.0.2.1:443'), ['ok']);
});

test.serial('errors say what to change and exit non-zero', async (t) => {
  const missing = await cli('policy', 'get', 'nobody');
  t.is(missing.code, 1);
  t.regex(missing.stderr, /computer not found \(HTTP 404/);
  const badRule = await cli('policy', 'set', 'cli-1', '--mode', 'allowlist', '--rule', 'github.com:99999');
  t.is(badRule.code, 1);
  t.regex(badRule.stderr, /port must be an integer from 1 to 65535/);
  const badMode = await cli('policy', 'set', 'cli-1', '--mode', 'open');
  t.regex(badMode.stderr, /--mode must be one of unrestricted, allowlist, denylist, isolated/);
  const noRules = await cli('policy', 'set', 'cli-1', '--mode', 'denylist');
  t.regex(noRules.stderr, /rules required for allowlist\/denylist mode/);
  const usage = await cli('computers', 'frobnicate');
  t.is(usage.code, 2);
  t.regex(usage.stderr, /usage: egressd computers/);
});

test.serial("policy set --dns; the proxy's refusals show up in egressd events, named", async (t) => {
  const cg = world.makeCgroup('cli-dns');
  t.is((await cli('computers', 'add', 'cli-dns', '--cgroup', cg.relative)).code, 0);
  const listed = await cli(
    'policy',
    'set',
    'cli-dns',
    '--mode',
    'allowlist',
    '--rule',
    '192.0.2.1:80/tcp',
    '--dns',
    'listed',
  );
  t.is(listed.code, 1);
  t.regex(
    listed.stderr,
    /dns: "listed" resolves only names that hostname rules cover.*\(HTTP 400, dns_not_allowed\)/,
  );
  const badDns = await cli('policy', 'set', 'cli-dns', '--mode', 'isolated', '--dns', 'some');
  t.is(badDns.code, 2);
  t.regex(badDns.stderr, /--dns must be one of listed, all, none/);
  const set = await cli('policy', 'set', 'cli-dns', '--mode', 'isolated', '--dns', 'none');
  t.is(set.code, 0, set.stderr);
  t.regex(set.stdout, /dns: +none/);
  t.is(JSON.parse((await cli('policy', 'get', 'cli-dns', '--json')).stdout).dns, 'none');
  // The proxy answers itself (the upstream of these tests does not exist), at once.
  const { out } = await world.run('dig', ['@127.0.0.53', '+tries=1', '+time=2', 'secret.exfil.test', 'TXT'], {
    cgroup: cg.path,
    netns: false,
  });
  t.regex(out, /status: NXDOMAIN/);
  let lines: string[] = [];
  for (let i = 0; i < 50 && lines.length === 0; i++) {
    await new Promise((r) => setTimeout(r, 100));
    const r = await cli('events', 'cli-dns', '--json');
    lines = r.stdout.split('\n').filter((l) => l.trim() !== '');
  }
  t.is(lines.length, 1, 'exactly one event');
  t.like(JSON.parse(lines[0] ?? '{}'), {
    computer: 'cli-dns',
    pid: null,
    comm: null,
    hostname: 'secret.exfil.test',
    protocol: 'udp',
    port: 53,
    reason: 'dns_refused',
  });
  const readable = await cli('events', 'cli-dns');
  t.regex(readable.stdout, /cli-dns denied DNS secret\.exfil\.test \(udp, dns_refused\)/);
  t.is((await cli('policy', 'set', 'cli-dns', '--mode', 'isolated', '--block-dns')).code, 0, 'the old flag');
  t.is((await cli('policy', 'learned', 'cli-dns')).code, 0);
});

test.serial(
  'run --create: the command runs confined, its status comes back, the computer is removed after',
  async (t) => {
    const r = await cli(
      'run',
      '--computer',
      'cli-run',
      '--create',
      '--mode',
      'isolated',
      '--',
      PROBE_PATH,
      '--netns',
      world.netnsPath,
      'tcp:192.0.2.1:80',
    );
    t.is(r.code, 0, r.stderr);
    t.is(JSON.parse(r.stdout.trim()).result, 'EPERM');
    const status = await cli('run', '--computer', 'cli-run2', '--create', '--', '/bin/sh', '-c', 'exit 7');
    t.is(status.code, 7);
    const list = await cli('computers', 'list', '--json');
    t.false(JSON.parse(list.stdout).some((c: { id: string }) => c.id.startsWith('cli-run')));
  },
);

test.serial(
  'kill -9 of egressd while a sandboxed process keeps connecting: enforcement never lapses',
  async (t) => {
    const cg = world.makeCgroup('cli-kill');
    t.is((await cli('computers', 'add', 'cli-kill', '--cgroup', cg.relative)).code, 0);
    t.is((await cli('policy', 'set', 'cli-kill', '--mode', 'allowlist', '--rule', '192.0.2.1/tcp')).code, 0);
    const denied = world.spawnProbe({ cgroup: cg.path }, 'loop:30000:10000000:tcp:192.0.2.2:80');
    const allowed = world.spawnProbe({ cgroup: cg.path }, 'loop:30000:10000000:tcp:192.0.2.1:80');
    await Promise.all([denied.ready, allowed.ready]);
    await stopEgressd('SIGKILL');
    // No egressd at all now; change the policy behind its back in Redis through a new instance later.
    await new Promise((r) => setTimeout(r, 300));
    egressd = await startEgressd();
    const set = await cli('policy', 'set', 'cli-kill', '--mode', 'allowlist', '--rule', '192.0.2.1:80/tcp');
    t.is(set.code, 0, set.stderr);
    const [d] = await denied.stop();
    const [a] = await allowed.stop();
    t.log(`denied: ${JSON.stringify(d?.counts)}, allowed: ${JSON.stringify(a?.counts)}`);
    t.deepEqual(Object.keys(d?.counts ?? {}), ['EPERM'], 'the denied address never connected');
    t.deepEqual(Object.keys(a?.counts ?? {}), ['ok'], 'the allowed address was never refused');
    const list = JSON.parse((await cli('computers', 'list', '--json')).stdout) as {
      id: string;
      state: string;
    }[];
    t.is(list.find((c) => c.id === 'cli-kill')?.state, 'enforced');
  },
);

test.serial('a denied connect shows up in egressd events (JSON log and Redis stream)', async (t) => {
  const cg = world.makeCgroup('cli-events');
  t.is((await cli('computers', 'add', 'cli-events', '--cgroup', cg.relative)).code, 0);
  t.is((await cli('policy', 'set', 'cli-events', '--mode', 'isolated')).code, 0);
  t.deepEqual(await world.probeResults({ cgroup: cg.path }, 'tcp:192.0.2.1:8080'), ['EPERM']);
  let lines: string[] = [];
  for (let i = 0; i < 50 && lines.length === 0; i++) {
    await new Promise((r) => setTimeout(r, 100));
    const r = await cli('events', 'cli-events', '--json');
    lines = r.stdout.split('\n').filter((l) => l.trim() !== '');
  }
  t.is(lines.length, 1, 'exactly one event');
  t.like(JSON.parse(lines[0] ?? '{}'), {
    computer: 'cli-events',
    comm: 'probe',
    address: '192.0.2.1',
    port: 8080,
    protocol: 'tcp',
    reason: 'mode',
  });
  const readable = await cli('events', 'cli-events');
  t.regex(readable.stdout, /cli-events probe\[\d+\] denied 192\.0\.2\.1:8080\/tcp \(mode\)/);
  // The agent's metrics are in the all-in-one /metrics (admin key), as valid Prometheus text.
  const scrape = await fetch(`http://127.0.0.1:${port}/metrics`, {
    headers: { authorization: `Bearer ${ADMIN_KEY}` },
  });
  t.is(scrape.status, 200);
  const metrics = parsePrometheus(await scrape.text());
  t.is(metrics.get('egressd_denials_total{computer="cli-events",reason="mode"}'), 1);
  t.is(metrics.get('egressd_agent_redis_connected'), 1);
  t.true((metrics.get('egressd_policy_apply_seconds_count') ?? 0) > 0);
  t.true(
    (metrics.get(
      'egressd_api_requests_total{method="PUT",route="/api/v1/computers/:id/network-policy",status="200"}',
    ) ?? 0) > 0,
  );
});
