/**
 * Loaded programs: the kernel keeps each name whole, and the pins are under
 * the names every agent looks for (an agent of another build adopts them).
 */
import { execFileSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import test from 'ava';
import * as bpf from '../../daemon/kernel/libbpf.js';
import { closeLoaded, GUARD_HOOKS, HOOKS, loadOrAdopt, NAME_CHECK } from '../../daemon/kernel/loader.js';
import { createWorld, type World } from '../helpers/world.js';

/** struct bpf_prog_info: name[BPF_OBJ_NAME_LEN] at offset 64. */
const INFO_SIZE = 80;
const NAME_OFFSET = 64;

let world: World;

test.before(async () => {
  world = await createWorld();
});

test.after.always(async () => {
  await world?.destroy();
});

/** The name the kernel keeps for a program (bpftool may show a longer one, from BTF). */
function kernelName(fd: number): string {
  const info = Buffer.alloc(INFO_SIZE);
  bpf.objInfo(fd, info);
  const name = info.subarray(NAME_OFFSET, NAME_OFFSET + 16);
  return name.subarray(0, name.indexOf(0) < 0 ? 16 : name.indexOf(0)).toString();
}

test.serial('the kernel and bpftool report every program by its full name', (t) => {
  const loaded = loadOrAdopt({ pinDir: world.pinDir });
  try {
    t.false(loaded.adopted);
    const all = [
      ...HOOKS.map((h) => ({ ...h, prog: loaded.programs[h.name] })),
      ...GUARD_HOOKS.map((h) => ({ ...h, prog: loaded.guards[h.name] })),
    ];
    for (const { program, prog } of all) {
      t.is(kernelName(prog.fd), program);
      const shown = JSON.parse(
        execFileSync('bpftool', ['-j', 'prog', 'show', 'id', String(prog.id)]).toString(),
      );
      t.is(shown.name, program);
    }
    // The name check's sk_msg program is pinned too, attached to its map rather than to cgroups.
    t.deepEqual(
      readdirSync(path.join(world.pinDir, 'progs')).sort(),
      [...all.map((h) => h.pin), NAME_CHECK.pin].sort(),
    );
  } finally {
    closeLoaded(loaded);
  }
});

test.serial('a second loader adopts the pinned programs', (t) => {
  const first = loadOrAdopt({ pinDir: world.pinDir });
  const second = loadOrAdopt({ pinDir: world.pinDir });
  try {
    t.true(second.adopted);
    for (const h of HOOKS) t.is(second.programs[h.name].id, first.programs[h.name].id, h.name);
    for (const h of GUARD_HOOKS) t.is(second.guards[h.name].id, first.guards[h.name].id, h.name);
  } finally {
    closeLoaded(first);
    closeLoaded(second);
  }
});
