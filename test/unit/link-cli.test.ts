/**
 * scripts/link-cli.sh, which run.sh and install-systemd.sh use to put
 * `egressd` on PATH: a link to the built CLI, made again without complaint,
 * never over a file that is not a link. Run against a temporary bin
 * directory (EGRESSD_BIN_DIR), never /usr/local/bin.
 */
import { execFile } from 'node:child_process';
import { lstatSync, mkdtempSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import { REPO_ROOT } from '../helpers/world.js';

const execFileAsync = promisify(execFile);
const SCRIPT = path.join(REPO_ROOT, 'scripts/link-cli.sh');
const CLI = path.join(REPO_ROOT, 'dist/cli/main.js');

async function link(binDir: string, ...args: string[]) {
  try {
    const r = await execFileAsync('bash', [SCRIPT, ...args], {
      env: { ...process.env, EGRESSD_BIN_DIR: binDir },
    });
    return { code: 0, ...r };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: e.code ?? 1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

test('links egressd to the built CLI, again without complaint, and the link runs', async (t) => {
  const bin = mkdtempSync(path.join(tmpdir(), 'egressd-bin-'));
  t.teardown(() => rmSync(bin, { recursive: true, force: true }));
  for (let i = 0; i < 2; i++) {
    const r = await link(bin);
    t.is(r.code, 0, r.stderr);
    t.true(lstatSync(path.join(bin, 'egressd')).isSymbolicLink());
    t.is(readlinkSync(path.join(bin, 'egressd')), CLI);
  }
  const help = await execFileAsync(path.join(bin, 'egressd'), ['--help']);
  t.regex(help.stdout, /^usage: egressd /);
});

test('another target (an installed tree), a missing one, and a file that is not a link', async (t) => {
  const bin = mkdtempSync(path.join(tmpdir(), 'egressd-bin-'));
  t.teardown(() => rmSync(bin, { recursive: true, force: true }));
  const missing = await link(bin, path.join(bin, 'nothing.js'));
  t.is(missing.code, 1);
  t.regex(missing.stderr, /is missing: build first/);
  const other = path.join(bin, 'cli.js');
  writeFileSync(other, '');
  t.is((await link(bin, other)).code, 0);
  t.is(readlinkSync(path.join(bin, 'egressd')), other);
  rmSync(path.join(bin, 'egressd'));
  writeFileSync(path.join(bin, 'egressd'), 'mine');
  const kept = await link(bin);
  t.is(kept.code, 1);
  t.regex(kept.stderr, /is not a symbolic link: left alone/);
});
