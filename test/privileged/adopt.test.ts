/**
 * Adoption: enforcement stays in force while no loader process exists, and
 * a second loader adopts the pins without detaching or attaching twice.
 */
import { execFile } from 'node:child_process';
import { closeSync, openSync, rmdirSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import * as bpf from '../../daemon/kernel/libbpf.js';
import { HOOKS } from '../../daemon/kernel/loader.js';
import type { LoaderAction } from '../helpers/loader-process.js';
import { createWorld, REPO_ROOT, type World } from '../helpers/world.js';

const execFileAsync = promisify(execFile);
let world: World;

test.before(async () => {
  world = await createWorld();
});

test.after.always(async () => {
  await world?.destroy();
});

async function loaderProcess(actions: LoaderAction[]): Promise<{ adopted: boolean; results: unknown[] }> {
  const script = path.join(REPO_ROOT, 'dist/test/helpers/loader-process.js');
  const request = { pinDir: world.pinDir, cgroupRoot: world.cgroupMount, actions };
  const { stdout } = await execFileAsync(process.execPath, [script, JSON.stringify(request)]);
  return JSON.parse(stdout.trim().split('\n').pop() ?? '{}');
}

/** How many programs are attached directly to the cgroup, per hook. */
function attachedCounts(cgroupPath: string): number[] {
  const fd = openSync(cgroupPath, 'r');
  try {
    return HOOKS.map((h) => bpf.progQuery(fd, h.attachType).length);
  } finally {
    closeSync(fd);
  }
}

test.serial(
  'the policy stays in force with no loader process; a second loader adopts without a second attachment',
  async (t) => {
    const cg = world.makeCgroup('adopted');
    const isolated = { mode: 'isolated' as const, rules: [] };
    const first = await loaderProcess([
      { op: 'attach', id: 'adopted', cgroup: cg.relative, policy: isolated, version: 1 },
    ]);
    t.false(first.adopted, 'the first loader loads the object');
    t.deepEqual(
      attachedCounts(cg.path),
      HOOKS.map(() => 1),
    );

    // No loader process exists now: the pins keep the programs attached and the policy in force.
    t.deepEqual(
      await world.probeResults(
        { cgroup: cg.path },
        'tcp:192.0.2.1:80',
        'udp-sendto:[2001:db8::1]:80',
        'raw4',
      ),
      ['EPERM', 'EPERM', 'EPERM'],
    );

    const allow = {
      mode: 'allowlist' as const,
      rules: [{ host: '192.0.2.1', protocol: 'tcp' as const, port: 80 }],
    };
    const second = await loaderProcess([
      { op: 'list' },
      { op: 'attach', id: 'adopted', cgroup: cg.relative, policy: allow, version: 2 },
      { op: 'apply', id: 'adopted', policy: allow, version: 2 },
      { op: 'list' },
    ]);
    t.true(second.adopted, 'the second loader adopts the pins');
    const [before, reattach, , after] = second.results as [
      { id: string; mode: string; version: string }[],
      { attached: boolean },
      null,
      { id: string; mode: string; version: string }[],
    ];
    t.like(
      before.find((c) => c.id === 'adopted'),
      { mode: 'isolated', version: '1' },
    );
    t.false(reattach.attached, 'attaching an adopted computer again is a no-op');
    t.like(
      after.find((c) => c.id === 'adopted'),
      { mode: 'allowlist', version: '2' },
    );
    t.deepEqual(
      attachedCounts(cg.path),
      HOOKS.map(() => 1),
      'exactly one attachment per hook',
    );
    t.deepEqual(await world.probeResults({ cgroup: cg.path }, 'tcp:192.0.2.1:80', 'tcp:192.0.2.2:80'), [
      'ok',
      'EPERM',
    ]);
  },
);

test.serial('a cgroup that is removed and made again under the same path is attached afresh', async (t) => {
  const cg = world.makeCgroup('recreated');
  const isolated = { mode: 'isolated' as const, rules: [] };
  await loaderProcess([{ op: 'attach', id: 'recreated', cgroup: cg.relative, policy: isolated, version: 1 }]);
  rmdirSync(cg.path);
  const again = world.makeCgroup('recreated');
  const listed = await loaderProcess([{ op: 'list' }]);
  const gone = (listed.results[0] as { id: string; cgroupId: string }[]).find((c) => c.id === 'recreated');
  t.is(gone?.cgroupId, '0', 'the links of a removed cgroup report no cgroup');
  const res = await loaderProcess([
    { op: 'attach', id: 'recreated', cgroup: again.relative, policy: isolated, version: 2 },
  ]);
  t.true((res.results[0] as { attached: boolean }).attached);
  t.deepEqual(
    attachedCounts(again.path),
    HOOKS.map(() => 1),
  );
  t.deepEqual(await world.probeResults({ cgroup: again.path }, 'tcp:192.0.2.1:80'), ['EPERM']);
});
