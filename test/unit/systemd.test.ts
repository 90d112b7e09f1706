import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { REPO_ROOT } from '../helpers/world.js';

const dir = path.join(REPO_ROOT, 'daemon/systemd');

for (const unit of readdirSync(dir).filter((f) => f.endsWith('.service'))) {
  test(`systemd-analyze verify ${unit} is clean`, (t) => {
    const r = spawnSync('systemd-analyze', ['verify', path.join(dir, unit)], { cwd: '/', encoding: 'utf8' });
    t.is(r.status, 0, r.stderr);
    t.is(`${r.stdout}${r.stderr}`.trim(), '');
  });
}
