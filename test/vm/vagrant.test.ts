/**
 * The VM tooling stays valid without booting anything: `vagrant validate` for
 * the public box and the offline box (it reads the Vagrantfile and checks the
 * libvirt provider's settings, so vagrant-libvirt must be installed: without any
 * provider vagrant validate fails; nothing is downloaded), and `bash -n` for the
 * VM scripts. Running the VMs themselves is `npm run test:vm`.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { REPO_ROOT } from '../helpers/world.js';

const vagrantDir = path.join(REPO_ROOT, 'vagrant');

for (const box of ['debian/bookworm64', 'egressd/bookworm-local']) {
  test(`vagrant validate (${box})`, (t) => {
    const dotfiles = mkdtempSync(path.join(os.tmpdir(), 'egressd-vagrant-'));
    t.teardown(() => rmSync(dotfiles, { recursive: true, force: true }));
    const r = spawnSync('vagrant', ['validate'], {
      cwd: vagrantDir,
      encoding: 'utf8',
      timeout: 90_000,
      env: {
        ...process.env,
        EGRESSD_BOX: box,
        VAGRANT_DOTFILE_PATH: dotfiles,
        VAGRANT_CHECKPOINT_DISABLE: '1',
      },
    });
    t.is(r.error, undefined, 'vagrant must be installed (Debian packages vagrant and vagrant-libvirt)');
    t.is(r.status, 0, `${r.stdout}${r.stderr}`);
    t.regex(r.stdout, /Vagrantfile validated successfully/);
  });
}

const scripts = [
  ...readdirSync(path.join(REPO_ROOT, 'scripts/vm'))
    .filter((f) => f.endsWith('.sh'))
    .map((f) => `scripts/vm/${f}`),
  'vagrant/provision.sh',
];

for (const script of scripts) {
  test(`bash -n ${script}`, (t) => {
    const r = spawnSync('bash', ['-n', path.join(REPO_ROOT, script)], { encoding: 'utf8' });
    t.is(r.status, 0, r.stderr);
  });
}
