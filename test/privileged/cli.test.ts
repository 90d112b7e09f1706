/**
 * The real `egressd` process and its client commands, against a real
 * redis-server, BPF and the test world: one-command use, `run`, readable
 * and JSON output, errors, and kill -9 of the agent while a sandboxed
 * process keeps connecting.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import { type Dnsmasq, startDnsmasq } from '../helpers/dnsmasq.js';
import { CLI, type Egressd, type EgressdOptions, freePort, startEgressd } from '../helpers/egressd.js';
import { parsePrometheus } from '../helpers/prometheus.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { createWorld, PROBE_PATH, type World } from '../helpers/world.js';

const execFileAsync = promisify(execFile);

let world: World;
let redis: TestRedis;
let dnsmasq: Dnsmasq;
/** The same port and state directory for every start: the client commands' environment names them. */
let options: EgressdOptions & { port: number; stateDir: string };
let egressd: Egressd;

function env(): NodeJS.ProcessEnv {
  return egressd.clientEnv();
}

async function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return cliWith({}, ...args);
}

/** The CLI with variables of env() changed (undefined: left out). */
async function cliWith(
  changes: Record<string, string | undefined>,
  ...args: string[]
): Promise<{ code: number; stdout: string; stderr: string }> {
  const vars = { ...env(), ...changes };
  for (const [name, value] of Object.entries(changes)) if (value === undefined) delete vars[name];
  try {
    const { stdout, stderr } = await execFileAsync(process.execPath, [CLI, ...args], { env: vars });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: e.code ?? 1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

/** `egressd events ID --json` lines, polled every 100 ms until there is one (at most 50 times). */
async function eventLines(id: string): Promise<string[]> {
  let lines: string[] = [];
  for (let i = 0; i < 50 && lines.length === 0; i++) {
    await new Promise((r) => setTimeout(r, 100));
    const r = await cli('events', id, '--json');
    lines = r.stdout.split('\n').filter((l) => l.trim() !== '');
  }
  return lines;
}

/**
 * `egressd run` of a probe in a new isolated computer ID. CMD runs as nobody, which cannot enter
 * the world's netns itself: it connects to the host's loopback, which an isolated computer in the
 * host namespace may not reach either. (test/privileged/run-confined.test.ts runs it in the world.)
 */
function isolatedProbe(id: string): string[] {
  return [
    'run',
    '--computer',
    id,
    '--create',
    '--mode',
    'isolated',
    '--',
    PROBE_PATH,
    `tcp:127.0.0.1:${world.hostLoopbackPort}`,
  ];
}

test.before(async () => {
  world = await createWorld();
  dnsmasq = await startDnsmasq(['host-record=learned.test,203.0.113.77,300']);
  redis = await startRedis();
  options = {
    world,
    redisUrl: redis.url,
    node: 'cli-node',
    port: await freePort(),
    stateDir: mkdtempSync(path.join(tmpdir(), 'egressd-cli-')),
    // Never the host's resolver: a dnsmasq on loopback that knows learned.test only.
    dnsUpstream: `${dnsmasq.host}:${dnsmasq.port}`,
  };
  egressd = await startEgressd(options);
});

test.after.always(async () => {
  await egressd?.stop('SIGKILL');
  await redis?.cleanup();
  await dnsmasq?.stop();
  if (options?.stateDir) rmSync(options.stateDir, { recursive: true, force: true });
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
  const lines = await eventLines('cli-dns');
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
    const r = await cli(...isolatedProbe('cli-run'));
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
    await egressd.stop('SIGKILL');
    // No egressd at all now; change the policy behind its back in Redis through a new instance later.
    await new Promise((r) => setTimeout(r, 300));
    egressd = await startEgressd(options);
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
  const lines = await eventLines('cli-events');
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
  const scrape = await egressd.client.send('GET', '/metrics');
  t.is(scrape.status, 200);
  const metrics = parsePrometheus(scrape.text);
  t.is(metrics.get('egressd_denials_total{computer="cli-events",reason="mode",audit="false"}'), 1);
  t.is(metrics.get('egressd_agent_redis_connected'), 1);
  t.true((metrics.get('egressd_policy_apply_seconds_count') ?? 0) > 0);
  t.true(
    (metrics.get(
      'egressd_api_requests_total{method="PUT",route="/api/v1/computers/:id/network-policy",status="200"}',
    ) ?? 0) > 0,
  );
});

test.serial("policy learned lists what the computer's DNS taught it", async (t) => {
  const cg = world.makeCgroup('cli-learns');
  t.is((await cli('computers', 'add', 'cli-learns', '--cgroup', cg.relative)).code, 0);
  const set = await cli(
    'policy',
    'set',
    'cli-learns',
    '--mode',
    'allowlist',
    '--rule',
    'learned.test:443/tcp',
  );
  t.is(set.code, 0, set.stderr);
  t.is(
    (await cli('policy', 'learned', 'cli-learns')).stdout.trim(),
    'cli-learns: nothing learned from DNS (or all of it expired)',
  );
  // dig in the host namespace: its DNS goes to the computer's proxy port on 127.0.0.1.
  const { out } = await world.run(
    'dig',
    ['@127.0.0.53', '+short', '+tries=1', '+time=2', 'learned.test', 'A'],
    {
      cgroup: cg.path,
      netns: false,
    },
  );
  t.is(out.trim(), '203.0.113.77');
  let listed = '';
  for (let i = 0; i < 50 && !listed.includes('203.0.113.77'); i++) {
    await new Promise((r) => setTimeout(r, 100));
    listed = (await cli('policy', 'learned', 'cli-learns')).stdout;
  }
  t.regex(listed, /^learned\.test +203\.0\.113\.77 +until \d{4}-/m);
  const json = JSON.parse((await cli('policy', 'learned', 'cli-learns', '--json')).stdout);
  t.like(json[0], { name: 'learned.test', address: '203.0.113.77' });
});

test.serial(
  'a cgroup that does not exist: said at once with the path, by add, set and list; enforced once it is made',
  async (t) => {
    const relative = world.cgroupRelative('cli-missing');
    const full = path.join(world.cgroupMount, relative);
    const add = await cli('computers', 'add', 'cli-missing', '--cgroup', relative);
    t.is(add.code, 0, 'registering before the cgroup exists is allowed');
    t.regex(
      add.stderr,
      new RegExp(
        `note: cli-missing is registered, but not enforced yet: cgroup_missing: cgroup ${full} does not exist on node cli-node`,
      ),
    );
    const started = Date.now();
    const set = await cli('policy', 'set', 'cli-missing', '--mode', 'isolated');
    t.is(set.code, 1);
    t.true(Date.now() - started < 4000, 'not after the whole wait');
    t.regex(set.stdout, /state: +cgroup_missing: cgroup .* does not exist/);
    t.regex(
      set.stderr,
      new RegExp(
        `^egressd: cli-missing: stored as version \\d+, not in force: cgroup_missing: cgroup ${full} does not exist`,
      ),
    );
    const list = await cli('computers', 'list');
    t.regex(list.stdout, /^cli-missing +cli-node +isolated +\d+ +cgroup_missing +/m);
    t.regex(list.stdout, new RegExp(`^  cgroup ${full} does not exist on node cli-node`, 'm'));
    const cg = world.makeCgroup('cli-missing');
    let state = '';
    const deadline = Date.now() + 1000;
    while (state !== 'enforced' && Date.now() < deadline) {
      const rows = JSON.parse((await cli('computers', 'list', '--json')).stdout) as {
        id: string;
        state: string;
      }[];
      state = rows.find((r) => r.id === 'cli-missing')?.state ?? '';
    }
    t.is(state, 'enforced', 'within a second of mkdir');
    t.deepEqual(await world.probeResults({ cgroup: cg.path }, 'tcp:192.0.2.1:80'), ['EPERM']);
    t.is((await cli('computers', 'remove', 'cli-missing')).code, 0);
  },
);

test.serial('computers add: an absolute path under the cgroup2 mount is stored relative', async (t) => {
  const cg = world.makeCgroup('cli-abs');
  const add = await cli('computers', 'add', 'cli-abs', '--cgroup', cg.path, '--json');
  t.is(add.code, 0, add.stderr);
  t.is(JSON.parse(add.stdout).cgroup, cg.relative);
  // The same cgroup again, as relative: it is taken.
  const again = await cli('computers', 'add', 'cli-abs-2', '--cgroup', cg.relative);
  t.is(again.code, 1);
  t.regex(
    again.stderr,
    /already belongs to another computer on this node \(cli-abs\).*\(HTTP 409, cgroup_in_use\)/,
  );
  t.is((await cli('computers', 'remove', 'cli-abs')).code, 0);
});

test.serial(
  'computers add --dns-upstream: the computer names its own resolver; a bad one is a 400 that says what to send',
  async (t) => {
    const cg = world.makeCgroup('cli-up');
    const add = await cli(
      'computers',
      'add',
      'cli-up',
      '--cgroup',
      cg.relative,
      '--dns-upstream',
      '127.0.0.1:5353',
    );
    t.is(add.code, 0, add.stderr);
    t.regex(add.stdout, /cli-up: cgroup .* DNS to 127\.0\.0\.1:5353/);
    const json = await cli('computers', 'add', 'cli-up', '--cgroup', cg.relative, '--json');
    t.is(JSON.parse(json.stdout).dns_upstream, '127.0.0.1:5353', 'absent keeps it');
    const bad = await cli('computers', 'add', 'cli-up', '--cgroup', cg.relative, '--dns-upstream', '[::]:53');
    t.is(bad.code, 1);
    t.regex(bad.stderr, /dns_upstream: must be the IP address of a resolver.*\(HTTP 400, invalid_request\)/);
    t.is((await cli('computers', 'remove', 'cli-up')).code, 0);
  },
);

test.serial(
  "run --create registers on the API's default node (the agent's), or on --node, and says which it waited for",
  async (t) => {
    // No EGRESSD_NODE on the client: the API's default node, which is its agent's.
    const r = await cliWith({ EGRESSD_NODE: undefined }, ...isolatedProbe('cli-run-node'));
    t.is(r.code, 0, r.stderr);
    t.is(JSON.parse(r.stdout.trim()).result, 'EPERM');
    // A node no agent serves: refused after the wait, naming the node; the command never ran.
    const elsewhere = await cliWith(
      { EGRESSD_NODE: undefined },
      'run',
      '--computer',
      'cli-run-elsewhere',
      '--create',
      '--node',
      'no-agent-here',
      '--mode',
      'isolated',
      '--',
      '/bin/echo',
      'ran',
    );
    t.is(elsewhere.code, 1);
    t.is(elsewhere.stdout, '');
    t.regex(
      elsewhere.stderr,
      /no agent of node no-agent-here confirmed the policy in time \(is one running with --node no-agent-here\?\)/,
    );
    const list = JSON.parse((await cli('computers', 'list', '--json')).stdout) as { id: string }[];
    t.false(
      list.some((c) => c.id.startsWith('cli-run-')),
      'removed after',
    );
  },
);

test.serial('the CLI inside a computer that refuses it says EPERM, with the URL', async (t) => {
  const cg = world.makeCgroup('cli-locked');
  t.is((await cli('computers', 'add', 'cli-locked', '--cgroup', cg.relative)).code, 0);
  t.is((await cli('policy', 'set', 'cli-locked', '--mode', 'isolated')).code, 0);
  const { code, out } = await world.run(process.execPath, [CLI, 'computers', 'list'], {
    cgroup: cg.path,
    netns: false,
    env: env(),
  });
  t.is(code, 1);
  t.regex(
    out,
    new RegExp(
      `^egressd: cannot reach the API at http://127\\.0\\.0\\.1:${options.port}/api/v1/computers \\(EPERM\\): .*inside a computer whose policy refuses it`,
    ),
  );
  t.is(out.trim().split('\n').length, 1, out);
  t.is((await cli('computers', 'remove', 'cli-locked')).code, 0);
});

test.serial('denials while no agent runs show under their computer once egressd is back', async (t) => {
  const cg = world.makeCgroup('cli-down');
  t.is((await cli('computers', 'add', 'cli-down', '--cgroup', cg.relative)).code, 0);
  t.is((await cli('policy', 'set', 'cli-down', '--mode', 'isolated')).code, 0);
  await egressd.stop('SIGKILL');
  // The agent process ends with its parent; wait until none holds the pins' lock.
  await new Promise((r) => setTimeout(r, 500));
  t.deepEqual(
    await world.probeResults({ cgroup: cg.path }, 'tcp:192.0.2.1:81'),
    ['EPERM'],
    'enforced with no agent',
  );
  egressd = await startEgressd(options);
  const events = (await eventLines('cli-down')).map((l) => JSON.parse(l));
  t.is(events.length, 1);
  t.like(events[0], { computer: 'cli-down', port: 81, reason: 'mode' });
});
