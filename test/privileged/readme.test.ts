/**
 * The README's walkthrough, run as written against a running `egressd`, so
 * that it cannot drift from what the code does. The test takes every ```sh
 * block that follows a `<!-- walkthrough -->` marker in README.md, runs its
 * commands one after the other in one bash (variables carry over), and
 * holds each command to the output that the README shows under it (lines
 * `#   ...`, where "..." stands for anything): such a command may fail (its
 * output says how); every other command must succeed.
 *
 * Where it runs: `egressd` (all-in-one, with its embedded Redis) and the
 * commands run in the test world's network namespace, so 127.0.0.1:8080 is
 * the world's own loopback and nothing leaves it; a dnsmasq there answers
 * example.com with an address that no route leads to. What differs from a real host, and is
 * substituted in the commands: `egressd` and `sudo` come from a temporary
 * directory first on PATH (a link to this tree's CLI, and a `sudo` that runs
 * its command: the test runs as root already); the sandbox root `egressd/`
 * is the world's cgroup root; /var/lib/egressd is a temporary state directory.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import test from 'ava';
import { type Dnsmasq, startDnsmasq } from '../helpers/dnsmasq.js';
import { CLI, type EgressdProcess, launch } from '../helpers/egressd.js';
import { createWorld, REPO_ROOT, WORLD_ADDRESSES, type World } from '../helpers/world.js';

const README = path.join(REPO_ROOT, 'README.md');

interface Step {
  command: string;
  /** The output lines the README shows under the command ('...' matches anything). */
  expected: string[];
}

/** The commands of the README's walkthrough blocks, with the outputs shown under them. */
function walkthroughSteps(markdown: string): Step[] {
  const steps: Step[] = [];
  const blocks = markdown.split('<!-- walkthrough -->').slice(1);
  for (const block of blocks) {
    const m = /```sh\n([\s\S]*?)```/.exec(block);
    if (!m?.[1]) continue;
    let pending = '';
    for (const line of m[1].split('\n')) {
      if (/^#\s{3}/.test(line)) {
        steps.at(-1)?.expected.push(line.replace(/^#\s{3}/, ''));
        continue;
      }
      if (pending === '' && (line.trim() === '' || line.trim().startsWith('#'))) continue;
      pending += line;
      if (line.endsWith('\\')) {
        pending += '\n';
        continue;
      }
      steps.push({ command: pending, expected: [] });
      pending = '';
    }
  }
  return steps;
}

function pattern(expected: string): RegExp {
  const parts = expected.split('...').map((p) => p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
  return new RegExp(parts.join('.*'));
}

let world: World;
let dnsmasq: Dnsmasq;
let dir: string;
let egressd: EgressdProcess | undefined;

test.before(async () => {
  // The world's server keeps off 8080: the API listens there, on the world's loopback.
  world = await createWorld({ ports: [80, 443] });
  // An address of no host: the proxy never learns the agent's own addresses (and here the agent runs in the
  // world, whose every address is its own), and a connect that got past the policy would find no route.
  dnsmasq = await startDnsmasq([`host-record=example.com,${WORLD_ADDRESSES.unreachable4},300`], {
    netns: world.netnsPath,
  });
  dir = mkdtempSync(path.join(tmpdir(), 'egressd-readme-'));
});

test.after.always(async () => {
  // SIGTERM: egressd stops its API, its agent and its redis-server; what is left of them is killed by PID.
  await egressd?.stop();
  await dnsmasq?.stop();
  await world?.destroy();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test.serial('the README walkthrough runs as written', async (t) => {
  const steps = walkthroughSteps(readFileSync(README, 'utf8'));
  t.true(steps.length >= 8, `found ${steps.length} commands in the README's walkthrough`);
  const stateDir = path.join(dir, 'state');
  const bin = path.join(dir, 'bin');
  execFileSync('mkdir', ['-p', bin, stateDir]);
  symlinkSync(CLI, path.join(bin, 'egressd'));
  writeFileSync(path.join(bin, 'sudo'), '#!/bin/sh\nexec "$@"\n');
  chmodSync(path.join(bin, 'sudo'), 0o755);
  const root = world.cgroupRelative();
  const env: NodeJS.ProcessEnv = {
    PATH: `${bin}:${process.env['PATH'] ?? '/usr/bin:/bin'}`,
    HOME: dir,
    EGRESSD_STATE_DIR: stateDir,
    EGRESSD_BPFFS_DIR: world.pinDir,
    EGRESSD_CGROUP_ROOTS: root,
    EGRESSD_DNS_UPSTREAM: `${dnsmasq.host}:${dnsmasq.port}`,
    EGRESSD_LOG_LEVEL: 'warn',
  };
  // As the README's first lines do (scripts/run.sh ends in it): egressd, in the world's namespace.
  egressd = await launch({
    args: [CLI],
    env,
    spawn: (command, args, opts) => world.spawn(command, args, opts),
  });

  // One bash for all the commands; each one's output and status in files of its own.
  const out = (i: number) => path.join(dir, `out.${i}`);
  const script = steps
    .map((s, i) => {
      const command = s.command
        .replaceAll('/var/lib/egressd', stateDir)
        .replace(/\begressd\/sandbox-1\b/g, `${root}/sandbox-1`);
      // A person reads each answer before the next command: events reach Redis within 250 ms.
      return `{\n${command}\n} > ${out(i)} 2>&1 < /dev/null; echo $? > ${out(i)}.status; sleep 0.5`;
    })
    .join('\n');
  writeFileSync(path.join(dir, 'walkthrough.sh'), script);
  const run = await world.run('bash', [path.join(dir, 'walkthrough.sh')], { env });
  t.is(run.code, 0, run.out);

  const outputs = steps.map((step, i) => {
    const output = readFileSync(out(i), 'utf8');
    t.log(`$ ${step.command}\n${output}`);
    return output;
  });
  steps.forEach((step, i) => {
    const output = outputs[i] ?? '';
    const status = Number(readFileSync(`${out(i)}.status`, 'utf8'));
    if (step.expected.length === 0) {
      t.is(status, 0, `${step.command}\n${output}`);
    }
    for (const line of step.expected) {
      t.regex(output, pattern(line), `${step.command}: the README shows "${line}"`);
    }
  });
  t.false(egressd.stderr().includes('"level":50'), egressd.stderr());
});

test('walkthroughSteps: commands, continuation lines and the outputs under them', (t) => {
  const md = [
    'text',
    '<!-- walkthrough -->',
    '```sh',
    'A=1   # a comment',
    '# a comment line',
    'echo "$A" \\',
    '  two',
    '#   1 two',
    '```',
    'not this:',
    '```sh',
    'echo no',
    '```',
  ].join('\n');
  t.deepEqual(walkthroughSteps(md), [
    { command: 'A=1   # a comment', expected: [] },
    { command: 'echo "$A" \\\n  two', expected: ['1 two'] },
  ]);
  t.true(pattern('curl: (7) Failed ... ms').test('curl: (7) Failed to connect after 0 ms'));
});
