/**
 * `egressd run` leaves CMD no way out of its computer: started as root, CMD
 * runs as nobody (or the sudo user), in a cgroup namespace rooted at its
 * computer, with no capabilities; it cannot write any cgroup.procs, and its
 * connects stay refused. Root only with --allow-root-escape, which warns.
 *
 * A real `egressd all` (real Redis, BPF, the test world). CMD must run in the
 * world's network namespace, and once it is nobody it cannot enter one
 * itself (setns needs CAP_SYS_ADMIN): so `egressd run` itself runs there
 * (nsenter), and reaches the API over the world's veth gateway, where
 * egressd listens.
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import { CLI, type Egressd, startEgressd } from '../helpers/egressd.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { createWorld, PROBE_PATH, type World } from '../helpers/world.js';

const execFileAsync = promisify(execFile);

let world: World;
let redis: TestRedis;
let egressd: Egressd;

function env(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  return egressd.clientEnv(extra);
}

/** `egressd ARGS` in the host namespace. */
async function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await execFileAsync(process.execPath, [CLI, ...args], { env: env() });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: e.code ?? 1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

/** `egressd run ARGS` as root in the world's network namespace, with `extra` in its environment. */
async function runInWorld(
  args: string[],
  extra: NodeJS.ProcessEnv = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = world.spawn(process.execPath, [CLI, 'run', ...args], {
    env: env(extra),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (d) => {
    stdout += d;
  });
  child.stderr?.on('data', (d) => {
    stderr += d;
  });
  const code: number = await new Promise((resolve) => child.once('close', (c) => resolve(c ?? 1)));
  return { code, stdout, stderr };
}

/**
 * What CMD sees and may do, printed as one JSON line; run as
 * `node -e "(check)(...)" PROBE TARGET...`, where TARGET is write:FILE (write
 * our pid, the way out) or mkdir:DIR. Ends with the probe's connects and
 * exit status 3.
 */
function check(
  fs: typeof import('node:fs'),
  execFileSync: typeof import('node:child_process').execFileSync,
  [probe, ...targets]: string[],
): never {
  const status = fs.readFileSync('/proc/self/status', 'utf8');
  const field = (k: string) => new RegExp(`^${k}:[ \\t]*(.*)$`, 'm').exec(status)?.[1]?.trim();
  const cgroup = () =>
    fs
      .readFileSync('/proc/self/cgroup', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('0::'));
  const tries: Record<string, string> = {};
  const before = cgroup();
  for (const t of targets) {
    const [op, file] = [t.slice(0, t.indexOf(':')), t.slice(t.indexOf(':') + 1)];
    try {
      if (op === 'write') fs.writeFileSync(file, String(process.pid));
      else fs.mkdirSync(file);
      tries[t] = 'ok';
    } catch (e) {
      tries[t] = (e as NodeJS.ErrnoException).code ?? String(e);
    }
  }
  const connects = execFileSync(
    probe!,
    ['tcp:192.0.2.1:80', 'tcp:[2001:db8::1]:443', 'udp-sendto:192.0.2.1:5353'],
    { encoding: 'utf8' },
  )
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l).result);
  console.log(
    JSON.stringify({
      uid: process.getuid?.(),
      gid: process.getgid?.(),
      groups: field('Groups'),
      capEff: field('CapEff'),
      capPrm: field('CapPrm'),
      capBnd: field('CapBnd'),
      capAmb: field('CapAmb'),
      noNewPrivs: field('NoNewPrivs'),
      env: { HOME: process.env['HOME'], USER: process.env['USER'], key: process.env['EGRESSD_API_KEY'] },
      before,
      after: cgroup(),
      tries,
      connects,
    }),
  );
  process.exit(3);
}

const CHECK = `(${check.toString()})(require('node:fs'), require('node:child_process').execFileSync, process.argv.slice(1))`;

interface Seen {
  uid: number;
  gid: number;
  /** Supplementary groups (Groups: of /proc/self/status; Node's getgroups() adds the gid). */
  groups: string;
  capEff: string;
  capPrm: string;
  capBnd: string;
  capAmb: string;
  noNewPrivs: string;
  env: { HOME?: string; USER?: string; key?: string };
  before: string;
  after: string;
  tries: Record<string, string>;
  connects: string[];
}

/** Runs the check confined in a fresh isolated computer `id`; every way out it tries must fail. */
async function confinedCheck(id: string, extraArgs: string[], extraEnv: NodeJS.ProcessEnv = {}) {
  const mount = world.cgroupMount;
  const own = path.join(world.cgroupRoot, 'run', id);
  const bystander = world.makeCgroup('bystander').path;
  // Host paths: the cgroup2 mount (and so the whole host tree) stays visible in CMD's cgroup namespace.
  const targets = [
    `write:${path.join(mount, 'cgroup.procs')}`,
    `write:${path.join(world.cgroupRoot, 'cgroup.procs')}`,
    `write:${path.join(world.cgroupRoot, 'run', 'cgroup.procs')}`,
    `write:${path.join(bystander, 'cgroup.procs')}`,
    `write:${path.join(own, 'cgroup.procs')}`,
    `mkdir:${path.join(own, 'escape')}`,
    `mkdir:${path.join(world.cgroupRoot, 'escape')}`,
  ];
  const r = await runInWorld(
    [
      '--computer',
      id,
      '--create',
      '--mode',
      'isolated',
      ...extraArgs,
      '--',
      process.execPath,
      '-e',
      CHECK,
      PROBE_PATH,
      ...targets,
    ],
    extraEnv,
  );
  return { ...r, seen: JSON.parse(r.stdout.trim().split('\n').at(-1) ?? '{}') as Seen, targets };
}

test.before(async () => {
  world = await createWorld({ gateway: true });
  redis = await startRedis();
  // On the world's veth gateway, where `egressd run` in the world reaches it.
  egressd = await startEgressd({ world, redisUrl: redis.url, node: 'run-node', host: world.gateway!.host4 });
});

test.after.always(async () => {
  await egressd?.stop('SIGKILL');
  await redis?.cleanup();
  await world?.destroy();
});

/** What every confined, non-root CMD must see, whoever it runs as. */
function assertConfined(
  t: import('ava').ExecutionContext,
  r: Awaited<ReturnType<typeof confinedCheck>>,
): void {
  t.is(r.code, 3, `the exit status passes through; stderr: ${r.stderr}`);
  const { seen } = r;
  t.not(seen.uid, 0);
  t.is(seen.before, '0::/', 'a cgroup namespace rooted at its computer');
  t.is(seen.after, '0::/', 'still in its computer after every try');
  t.deepEqual(
    seen.tries,
    Object.fromEntries(r.targets.map((x) => [x, 'EACCES'])),
    'no cgroup.procs is writable, no cgroup can be made',
  );
  t.deepEqual(seen.connects, ['EPERM', 'EPERM', 'EPERM'], 'isolated: every connect and send refused');
  for (const set of [seen.capEff, seen.capPrm, seen.capBnd, seen.capAmb]) t.is(set, '0000000000000000');
  t.is(seen.noNewPrivs, '1');
  t.is(seen.env.key, undefined, "egressd's API key is not passed on");
  t.is(r.stderr, '', 'no warning');
}

test.serial(
  'run --create as root: CMD runs as nobody, cannot leave its computer, stays refused',
  async (t) => {
    const r = await confinedCheck('run-nobody', []);
    t.log(JSON.stringify(r.seen));
    assertConfined(t, r);
    t.like(r.seen, {
      uid: 65534,
      gid: 65534,
      groups: '65534',
      env: { HOME: '/nonexistent', USER: 'nobody' },
    });
    const list = JSON.parse((await cli('computers', 'list', '--json')).stdout) as { id: string }[];
    t.false(
      list.some((c) => c.id === 'run-nobody'),
      'the transient computer is removed',
    );
  },
);

test.serial('run through sudo: CMD runs as SUDO_UID/SUDO_GID, just as confined', async (t) => {
  // A uid and gid with no passwd entry: a throwaway user, with no supplementary groups.
  const r = await confinedCheck('run-sudo', [], { SUDO_UID: '4242', SUDO_GID: '4343', SUDO_USER: 'gone' });
  assertConfined(t, r);
  t.like(r.seen, { uid: 4242, gid: 4343, groups: '' });
  // --user and --group win over sudo's.
  const chosen = await confinedCheck('run-user', ['--user', 'nobody', '--group', '4343'], {
    SUDO_UID: '4242',
    SUDO_GID: '4343',
  });
  assertConfined(t, chosen);
  t.like(chosen.seen, { uid: 65534, gid: 4343 });
});

test.serial(
  '--user root is refused without --allow-root-escape; with it, a warning, and root can leave',
  async (t) => {
    const refused = await runInWorld(['--computer', 'run-root', '--create', '--user', 'root', '--', 'true']);
    t.is(refused.code, 1);
    t.regex(refused.stderr, /CMD would run as root.*--allow-root-escape/);
    const list = JSON.parse((await cli('computers', 'list', '--json')).stdout) as { id: string }[];
    t.false(
      list.some((c) => c.id === 'run-root'),
      'refused before anything was made',
    );
    // What the flag's name says: root writes itself into the mount's root cgroup and connects.
    const script =
      'id -u; grep "^0::" /proc/self/cgroup; echo $$ > "$1/cgroup.procs" && grep "^0::" /proc/self/cgroup; ' +
      '"$2" tcp:192.0.2.1:80; exit 5';
    const root = await runInWorld([
      '--computer',
      'run-root',
      '--create',
      '--mode',
      'isolated',
      '--user',
      'root',
      '--allow-root-escape',
      '--',
      '/bin/sh',
      '-c',
      script,
      'sh',
      world.cgroupMount,
      PROBE_PATH,
    ]);
    t.is(root.code, 5, root.stderr);
    t.regex(
      root.stderr,
      /^egressd run: warning: CMD runs as root \(--allow-root-escape\): it can move itself out/,
    );
    const lines = root.stdout.trim().split('\n');
    t.deepEqual(lines.slice(0, 2), ['0', '0::/'], 'root, in its cgroup namespace');
    t.regex(lines[2] ?? '', /^0::\/\.\.(\/\.\.)*$/, 'then above its root: out of the computer');
    t.is(JSON.parse(lines[3] ?? '{}').result, 'ok', 'and no longer refused');
  },
);

test.serial('a CMD killed by a signal: 128 + its number', async (t) => {
  const r = await runInWorld([
    '--computer',
    'run-signal',
    '--create',
    '--',
    '/bin/sh',
    '-c',
    'kill -TERM $$',
  ]);
  t.is(r.code, 143, r.stderr);
});
