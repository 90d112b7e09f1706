/**
 * Tests of the test world itself (test/helpers/world.ts and build/probe),
 * without any BPF: the namespace, its servers, cgroups and teardown.
 */

import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { createInterface } from 'node:readline';
import test from 'ava';
import {
  CLOSED_PORT,
  createWorld,
  OWNER_DIR,
  opTarget,
  sweepStaleWorlds,
  type World,
} from '../helpers/world.js';

let world: World;

test.before(async () => {
  world = await createWorld();
});

test.after.always(async () => {
  await world?.destroy();
});

test('TCP over IPv4 and IPv6 reaches the world server; a closed port refuses', async (t) => {
  const results = await world.probeResults(
    {},
    'tcp:192.0.2.1:80',
    'tcp:[2001:db8::1]:80',
    'tcp6-mapped:198.51.100.2:443',
    'tcp:203.0.113.77:8080',
    `tcp:192.0.2.1:${CLOSED_PORT}`,
    'tcp:192.0.2.99:80',
  );
  t.deepEqual(results, ['ok', 'ok', 'ok', 'ok', 'ECONNREFUSED', 'ENETUNREACH']);
});

test('UDP sends reach the world server', async (t) => {
  const results = await world.probeResults(
    {},
    'udp-sendto:192.0.2.2:5353',
    'udp-connect:[2001:db8::2]:5353',
    'udp-sendmmsg:192.0.2.200:5353',
    'udp6-mapped-sendto:203.0.113.1:5353',
  );
  t.deepEqual(results, ['ok', 'ok', 'ok', 'ok']);
  const ev = await world.waitForServerEvent((e) => e.proto === 'udp' && e.local === '192.0.2.200');
  t.is(ev.where, 'world');
  t.is(ev.port, 5353);
});

test('ping sockets work in the world namespace; raw sockets need nothing', async (t) => {
  const results = await world.probeResults({}, 'ping4:192.0.2.1', 'ping6:2001:db8::1', 'raw4', 'raw6');
  t.deepEqual(results, ['ok', 'ok', 'ok', 'ok']);
});

test('the host loopback server answers on 127.0.0.1 and ::1', async (t) => {
  const port = world.hostLoopbackPort;
  t.true(port > 0);
  const results = await world.probeResults(
    { netns: false },
    `tcp:127.0.0.1:${port}`,
    `tcp:[::1]:${port}`,
    `udp-sendto:127.0.0.1:${port}`,
  );
  t.deepEqual(results, ['ok', 'ok', 'ok']);
  await world.waitForServerEvent((e) => e.where === 'host' && e.proto === 'udp' && e.port === port);
});

test('a probe in the host namespace may target loopback only', async (t) => {
  await t.throwsAsync(world.probe({ netns: false }, 'tcp:192.0.2.1:80'), { message: /only target loopback/ });
  await t.throwsAsync(world.probe({ netns: false }, 'loop:10:1:udp-sendto:[2001:db8::1]:53'), {
    message: /only target loopback/,
  });
  t.is(opTarget('tcp:[2001:db8::1]:80'), '2001:db8::1');
  t.is(opTarget('loop:1:1:ping4:192.0.2.1'), '192.0.2.1');
  t.is(opTarget('raw4'), undefined);
});

test('a looping probe lives in its nested cgroup until stopped', async (t) => {
  const c = world.makeCgroup('computer/child');
  t.is(c.relative, `${world.cgroupRelative()}/computer/child`);
  const running = world.spawnProbe({ cgroup: c.path }, 'loop:20000:1000000:tcp:192.0.2.1:80');
  await running.ready;
  t.deepEqual(world.cgroupProcs('computer/child'), [running.pid]);
  t.true(readFileSync(`/proc/${running.pid}/cgroup`, 'utf8').includes(`/${c.relative}\n`));
  const started = Date.now();
  const [loop] = await running.stop();
  t.true(Date.now() - started < 3000, 'stdin EOF ends the loop promptly');
  t.is(loop?.op, 'loop');
  t.true((loop?.counts?.['ok'] ?? 0) > 0);
  t.is(loop?.iterations, loop?.counts?.['ok']);
  t.deepEqual(world.cgroupProcs('computer/child'), []);
});

test('a probe that cannot join its cgroup fails loudly', async (t) => {
  await t.throwsAsync(world.probe({ cgroup: 'does-not-exist' }, 'raw4'), { message: /exited with 3/ });
});

test('destroy() removes netns, cgroups, pins and processes, and is idempotent', async (t) => {
  const w = await createWorld({ ports: [80] });
  w.makeCgroup('a/b/c');
  w.makeCgroup('d');
  const leftover = w.spawnProbe({ cgroup: 'a/b' }, 'loop:60000:100000000:udp-sendto:192.0.2.1:80');
  await leftover.ready;
  const pinned = `${w.pinDir}/sub`;
  mkdirSync(pinned);
  t.true(existsSync(w.netnsPath));
  await w.destroy();
  await w.destroy();
  t.false(existsSync(w.netnsPath));
  t.false(existsSync(w.cgroupRoot));
  t.false(existsSync(w.pinDir));
  t.not(leftover.child.exitCode ?? leftover.child.signalCode, null);
  await t.throwsAsync(w.probe({}, 'raw4'), { message: /destroyed/ });
});

test('sweepStaleWorlds() removes the world of a test process that was killed', async (t) => {
  const helper = new URL('../helpers/world.js', import.meta.url).href;
  const script = `const m = await import(${JSON.stringify(helper)}); const w = await m.createWorld(); console.log(w.id); setTimeout(() => {}, 30000);`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  const id = await new Promise<string>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`world helper exited with ${code}`)));
    createInterface({ input: child.stdout! }).once('line', resolve);
  });
  t.true(existsSync(`/run/netns/egt-${id}`));
  t.false(sweepStaleWorlds().includes(id), 'a live owner keeps its world');
  child.kill('SIGKILL');
  await new Promise((resolve) => child.once('exit', resolve));
  t.true(sweepStaleWorlds().includes(id));
  t.false(existsSync(`/run/netns/egt-${id}`));
  t.false(existsSync(`${world.cgroupRoot}/../egressd-test-${id}`));
  t.false(existsSync(`/sys/fs/bpf/egressd-test-${id}`));
  t.false(existsSync(`${OWNER_DIR}/${id}`));
});

test('spawn() runs any command in the world netns and a cgroup', async (t) => {
  world.makeCgroup('spawned');
  const child = world.spawn('sleep', ['30'], { cgroup: 'spawned' });
  t.teardown(() => child.kill('SIGKILL'));
  const deadline = Date.now() + 3000;
  const cmdline = () => readFileSync(`/proc/${child.pid}/cmdline`, 'utf8');
  // nsenter and sh exec the command, so the child's pid ends up being sleep's.
  while (!cmdline().startsWith('sleep') && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  t.deepEqual(world.cgroupProcs('spawned'), [child.pid]);
  t.is(readlinkSync(`/proc/${child.pid}/ns/net`), `net:[${statSync(world.netnsPath).ino}]`);
});
