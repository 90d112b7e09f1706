/**
 * Kernel enforcement against real BPF, cgroups and a network namespace:
 * every mode × {tcp, udp} × {IPv4, IPv6, IPv4-mapped}, port and protocol
 * rules, and the escape attempts of issue 2 (sendmmsg, TCP Fast Open, raw
 * and ping sockets, child cgroups, loopback).
 */
import { rmdirSync } from 'node:fs';
import test from 'ava';
import { Enforcer } from '../../daemon/kernel/enforcer.js';
import { HOOKS } from '../../daemon/kernel/loader.js';
import type { Policy } from '../../policy/types.js';
import { createWorld, type World } from '../helpers/world.js';

let world: World;
let enforcer: Enforcer;
let counter = 0;

const INTERNAL = '198.51.100.0/24';

test.before(async () => {
  world = await createWorld();
  enforcer = Enforcer.open({
    pinDir: world.pinDir,
    cgroupRoot: world.cgroupMount,
    internalCidrs: [INTERNAL],
  });
});

test.after.always(async () => {
  enforcer?.close();
  await world?.destroy();
});

/** A fresh computer (cgroup + attachment) with `policy` in force. */
function computer(policy: Policy): { id: string; cgroup: string } {
  const id = `c${++counter}`;
  const cg = world.makeCgroup(id);
  enforcer.attach(id, cg.relative, policy, 1n);
  return { id, cgroup: cg.path };
}

const run = (cgroup: string, ...ops: string[]) => world.probeResults({ cgroup }, ...ops);

// Destinations: A is allowed by the allowlist and B is denied by the denylist.
const A4 = '192.0.2.1';
const B4 = '192.0.2.2';
const A6 = '2001:db8::1';
const B6 = '2001:db8::2';

function opsFor(v4: string, v6: string): string[] {
  return [
    `tcp:${v4}:80`,
    `udp-sendto:${v4}:80`,
    `tcp:[${v6}]:80`,
    `udp-sendto:[${v6}]:80`,
    `tcp6-mapped:${v4}:80`,
    `udp6-mapped-sendto:${v4}:80`,
  ];
}

const everyOp = (result: string) => Array(6).fill(result);

test('unrestricted: everything connects', async (t) => {
  const c = computer({ mode: 'unrestricted', rules: [] });
  t.deepEqual(await run(c.cgroup, ...opsFor(A4, A6), ...opsFor(B4, B6)), everyOp('ok').concat(everyOp('ok')));
});

test('allowlist: listed destinations connect, others get EPERM (tcp, udp; IPv4, IPv6, mapped)', async (t) => {
  const c = computer({
    mode: 'allowlist',
    rules: [
      { host: A4, protocol: 'any' },
      { host: A6, protocol: 'any' },
    ],
  });
  t.deepEqual(await run(c.cgroup, ...opsFor(A4, A6)), everyOp('ok'));
  t.deepEqual(await run(c.cgroup, ...opsFor(B4, B6)), everyOp('EPERM'));
});

test('denylist: listed destinations get EPERM, others connect (tcp, udp; IPv4, IPv6, mapped)', async (t) => {
  const c = computer({
    mode: 'denylist',
    rules: [
      { host: B4, protocol: 'any' },
      { host: B6, protocol: 'any' },
    ],
  });
  t.deepEqual(await run(c.cgroup, ...opsFor(A4, A6)), everyOp('ok'));
  t.deepEqual(await run(c.cgroup, ...opsFor(B4, B6)), everyOp('EPERM'));
});

test('isolated: nothing connects (tcp, udp; IPv4, IPv6, mapped)', async (t) => {
  const c = computer({ mode: 'isolated', rules: [] });
  t.deepEqual(
    await run(c.cgroup, ...opsFor(A4, A6), ...opsFor(B4, B6)),
    everyOp('EPERM').concat(everyOp('EPERM')),
  );
});

test('an allowed UDP datagram really arrives; a denied one never does', async (t) => {
  const c = computer({ mode: 'allowlist', rules: [{ host: A4, protocol: 'udp', port: 5353 }] });
  t.deepEqual(await run(c.cgroup, `udp-sendto:${A4}:5353`, `udp-sendto:${B4}:5353`), ['ok', 'EPERM']);
  await world.waitForServerEvent((e) => e.proto === 'udp' && e.port === 5353 && e.local === A4);
  t.false(world.serverEvents().some((e) => e.proto === 'udp' && e.local === B4 && e.port === 5353));
});

test('port rules: only the listed port of the listed protocol', async (t) => {
  const c = computer({ mode: 'allowlist', rules: [{ host: A4, port: 80, protocol: 'tcp' }] });
  t.deepEqual(
    await run(c.cgroup, `tcp:${A4}:80`, `tcp:${A4}:443`, `udp-sendto:${A4}:80`, `tcp6-mapped:${A4}:443`),
    ['ok', 'EPERM', 'EPERM', 'EPERM'],
  );
  const d = computer({ mode: 'denylist', rules: [{ host: `${A6}/128`, port: 443, protocol: 'tcp' }] });
  t.deepEqual(await run(d.cgroup, `tcp:[${A6}]:443`, `tcp:[${A6}]:80`, `udp-sendto:[${A6}]:443`), [
    'EPERM',
    'ok',
    'ok',
  ]);
});

test('protocol rules: udp-only and tcp-only', async (t) => {
  const c = computer({ mode: 'allowlist', rules: [{ host: A4, protocol: 'udp' }] });
  t.deepEqual(await run(c.cgroup, `udp-sendto:${A4}:443`, `udp-connect:${A4}:80`, `tcp:${A4}:80`), [
    'ok',
    'ok',
    'EPERM',
  ]);
  const d = computer({ mode: 'allowlist', rules: [{ host: A6, protocol: 'tcp' }] });
  t.deepEqual(await run(d.cgroup, `tcp:[${A6}]:443`, `udp-sendto:[${A6}]:443`), ['ok', 'EPERM']);
});

test('CIDR rules and nested prefixes: the longest match carries what shorter ones allow', async (t) => {
  const c = computer({
    mode: 'allowlist',
    rules: [
      { host: '192.0.2.0/24', protocol: 'tcp', port: 443 },
      { host: '192.0.2.0/30', protocol: 'tcp', port: 80 },
      { host: '2001:db8::/48', protocol: 'any' },
    ],
  });
  t.deepEqual(
    await run(
      c.cgroup,
      `tcp:${A4}:443`, // /24 via the /30 entry
      `tcp:${B4}:80`, // /30
      `tcp:192.0.2.200:443`, // /24
      `tcp:192.0.2.200:80`, // outside the /30
      `tcp:[${B6}]:8080`,
      `tcp:[2001:db8:1::1]:80`, // outside the /48
    ),
    ['ok', 'ok', 'ok', 'EPERM', 'ok', 'EPERM'],
  );
});

test('unconnected UDP sendmmsg, connected UDP and TCP Fast Open are judged too', async (t) => {
  const c = computer({ mode: 'allowlist', rules: [{ host: A4, protocol: 'any' }] });
  t.deepEqual(
    await run(
      c.cgroup,
      `udp-sendmmsg:${A4}:80`,
      `udp-sendmmsg:${B4}:80`,
      `udp-connect:${B4}:80`,
      `tfo:${B4}:80`,
      `udp-sendmmsg:[${B6}]:80`,
      `tfo:[${B6}]:80`,
    ),
    ['ok', 'EPERM', 'EPERM', 'EPERM', 'EPERM', 'EPERM'],
  );
});

test('raw, ping and other non-TCP/UDP sockets are refused in every mode but unrestricted', async (t) => {
  const ops = ['raw4', 'raw6', `ping4:${A4}`, `ping6:${A6}`, `sctp:${A4}:80`];
  for (const mode of ['allowlist', 'denylist', 'isolated'] as const) {
    const rules = mode === 'isolated' ? [] : [{ host: '0.0.0.0/0', protocol: 'any' as const }];
    const c = computer({ mode, rules });
    const results = await run(c.cgroup, ...ops);
    t.deepEqual(results.slice(0, 4), ['EPERM', 'EPERM', 'EPERM', 'EPERM'], mode);
    // This kernel may have no SCTP at all; where it has, the hook refuses it.
    t.true(['EPERM', 'EPROTONOSUPPORT'].includes(results[4] ?? ''), `${mode}: sctp ${results[4]}`);
  }
  const free = computer({ mode: 'unrestricted', rules: [] });
  const [raw4, raw6, ping4, ping6] = await run(free.cgroup, ...ops);
  t.deepEqual([raw4, raw6, ping4, ping6], ['ok', 'ok', 'ok', 'ok']);
});

test('a child cgroup created after the policy was applied is governed like its parent', async (t) => {
  const c = computer({ mode: 'allowlist', rules: [{ host: A4, protocol: 'tcp', port: 80 }] });
  const child = world.makeCgroup(`${c.cgroup.split('/').pop()}/later/deeper`);
  t.deepEqual(await run(child.path, `tcp:${A4}:80`, `tcp:${B4}:80`, `udp-sendto:[${B6}]:80`, 'raw4'), [
    'ok',
    'EPERM',
    'EPERM',
    'EPERM',
  ]);
  // And a later policy change reaches it too.
  enforcer.apply(c.id, { mode: 'isolated', rules: [] }, 2n);
  t.deepEqual(await run(child.path, `tcp:${A4}:80`), ['EPERM']);
});

test('DNS (port 53) leaves only through the proxy: with no proxy port it is refused in every mode but unrestricted', async (t) => {
  for (const policy of [
    { mode: 'isolated', rules: [] },
    { mode: 'allowlist', rules: [{ host: B4, protocol: 'any' }] },
    { mode: 'denylist', rules: [{ host: A4, protocol: 'any' }] },
  ] as Policy[]) {
    const c = computer(policy);
    t.deepEqual(
      await run(
        c.cgroup,
        `udp-sendto:${B4}:53`,
        `tcp:${B4}:53`,
        `tcp:[${B6}]:53`,
        `udp6-mapped-sendto:${B4}:53`,
      ),
      ['EPERM', 'EPERM', 'EPERM', 'EPERM'],
      policy.mode,
    );
  }
  const free = computer({ mode: 'unrestricted', rules: [] });
  t.deepEqual(await run(free.cgroup, `udp-sendto:${B4}:53`, `tcp:${B4}:53`), ['ok', 'ECONNREFUSED']);
});

test('internal CIDRs are reachable in every mode', async (t) => {
  const modes: Policy[] = [
    { mode: 'isolated', rules: [] },
    { mode: 'allowlist', rules: [{ host: A4, protocol: 'any' }] },
    { mode: 'denylist', rules: [{ host: INTERNAL, protocol: 'any' }] },
  ];
  for (const policy of modes) {
    const c = computer(policy);
    t.deepEqual(
      await run(c.cgroup, 'tcp:198.51.100.1:80', 'udp-sendto:198.51.100.2:80'),
      ['ok', 'ok'],
      policy.mode,
    );
  }
});

test("a computer's own loopback (its own netns) stays reachable; the host's loopback is a destination like any other", async (t) => {
  const c = computer({ mode: 'isolated', rules: [] });
  // The world's server listens on every address of the world namespace, its loopback too.
  t.deepEqual(
    await run(c.cgroup, 'tcp:127.0.0.1:80', 'tcp:[::1]:80', 'tcp:0.0.0.0:80', 'udp-sendto:127.0.0.2:80'),
    ['ok', 'ok', 'ok', 'ok'],
  );
  const port = world.hostLoopbackPort;
  const host = (cg: string, ...ops: string[]) => world.probeResults({ cgroup: cg, netns: false }, ...ops);
  t.deepEqual(
    await host(c.cgroup, `tcp:127.0.0.1:${port}`, `tcp:[::1]:${port}`, `udp-sendto:127.0.0.1:${port}`),
    ['EPERM', 'EPERM', 'EPERM'],
  );
  const allowed = computer({ mode: 'allowlist', rules: [{ host: '127.0.0.1', protocol: 'tcp', port }] });
  t.deepEqual(await host(allowed.cgroup, `tcp:127.0.0.1:${port}`, `tcp:[::1]:${port}`), ['ok', 'EPERM']);
});

test('detach restores the cgroup to no enforcement and leaves no attachment behind', async (t) => {
  const c = computer({ mode: 'isolated', rules: [] });
  t.deepEqual(await run(c.cgroup, `tcp:${A4}:80`), ['EPERM']);
  enforcer.detach(c.id);
  t.deepEqual(await run(c.cgroup, `tcp:${A4}:80`, 'raw4'), ['ok', 'ok']);
  t.false(enforcer.list().some((s) => s.id === c.id));
});

test('attaching twice does nothing the second time; list shows mode and version', (t) => {
  const cg = world.makeCgroup('twice');
  const first = enforcer.attach('twice', cg.relative, { mode: 'isolated', rules: [] }, 7n);
  const second = enforcer.attach('twice', cg.relative, { mode: 'unrestricted', rules: [] }, 7n);
  t.true(first.attached);
  t.false(second.attached);
  const state = enforcer.list().find((s) => s.id === 'twice');
  t.is(state?.mode, 'isolated', 'the same version is not installed again');
  t.is(state?.version, 7n);
  t.is(state?.hooks.length, HOOKS.length);
  const third = enforcer.attach('twice', cg.relative, { mode: 'unrestricted', rules: [] }, 8n);
  t.false(third.attached);
  t.like(enforcer.state('twice'), { mode: 'unrestricted', version: 8n });
});

test('operator errors say what to change', (t) => {
  const missing = t.throws(() => enforcer.attach('ghost', 'no/such/cgroup', { mode: 'isolated', rules: [] }));
  t.regex(missing?.message ?? '', /does not exist.*create it first/);
  const badId = t.throws(() => enforcer.attach('../x', 'x', { mode: 'isolated', rules: [] }));
  t.regex(badId?.message ?? '', /must be 1 to 128 characters/);
  const notAttached = t.throws(() => enforcer.apply('nobody', { mode: 'isolated', rules: [] }, 1n));
  t.regex(notAttached?.message ?? '', /not attached/);
  const outside = t.throws(() => enforcer.attach('esc', '../../etc', { mode: 'isolated', rules: [] }));
  t.regex(outside?.message ?? '', /does not exist under/);
  t.throws(() => enforcer.setInternalCidrs(['example.com']), { message: /not an address or CIDR/ });
});

test('under a sandbox root, a cgroup that no attached computer covers has no network; a recreated one stays refused until attached', async (t) => {
  const root = world.makeCgroup('sandboxes');
  enforcer.guard.attachRoots([root.relative]);
  // Attaching again keeps the same links (no second attachment).
  enforcer.guard.attachRoots([root.relative]);
  const stray = world.makeCgroup('sandboxes/stray');
  t.deepEqual(
    await run(stray.path, `tcp:${A4}:80`, `udp-sendto:[${A6}]:80`, `tcp6-mapped:${A4}:80`, 'raw4'),
    ['EPERM', 'EPERM', 'EPERM', 'EPERM'],
  );
  // A computer under the root is judged by its own policy, its child cgroups too.
  const box = world.makeCgroup('sandboxes/tenant/box');
  enforcer.attach('guarded', box.relative, { mode: 'unrestricted', rules: [] }, 1n);
  const child = world.makeCgroup('sandboxes/tenant/box/child');
  t.deepEqual(await run(box.path, `tcp:${A4}:80`, `tcp:[${A6}]:80`), ['ok', 'ok']);
  t.deepEqual(await run(child.path, `udp-sendto:${B4}:80`), ['ok']);
  // The same path made again is another cgroup: refused until it is attached.
  rmdirSync(child.path);
  rmdirSync(box.path);
  world.makeCgroup('sandboxes/tenant/box');
  t.deepEqual(await run(box.path, `tcp:${A4}:80`, `udp-sendto:${A4}:80`), ['EPERM', 'EPERM']);
  enforcer.attach('guarded', box.relative, { mode: 'allowlist', rules: [{ host: A4, protocol: 'tcp' }] }, 2n);
  t.deepEqual(await run(box.path, `tcp:${A4}:80`, `tcp:${B4}:80`), ['ok', 'EPERM']);
  // Detached: refused again. Outside the root nothing changes.
  enforcer.detach('guarded');
  t.deepEqual(await run(box.path, `tcp:${A4}:80`), ['EPERM']);
  t.deepEqual(await run(world.makeCgroup('outside').path, `tcp:${A4}:80`), ['ok']);
  enforcer.guard.attachRoots([]);
  t.deepEqual(await run(stray.path, `tcp:${A4}:80`), ['ok']);
});
