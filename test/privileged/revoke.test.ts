/**
 * Live revocation (daemon/kernel/revoker.ts, bpf/revoke.bpf.c): once a
 * computer's policy tightens, Enforcer.revoke() closes exactly the
 * connections that the policy refuses — TCP over IPv4, IPv6 and v4-mapped,
 * connected UDP — of that computer and its child cgroups, in the world's
 * namespace and in the agent's; everything else (allowed peers, unconnected
 * sockets, other computers, the host) keeps working. Real sockets held by
 * real processes, judged by the kernel.
 */
import { release } from 'node:os';
import test, { type ExecutionContext } from 'ava';
import { Enforcer, type RevokedRecord } from '../../daemon/kernel/enforcer.js';
import type { Policy } from '../../policy/types.js';
import { SCALE } from '../helpers/egressd.js';
import {
  ECHO_PORT,
  echoServer,
  holdSockets,
  KERNEL_DESTROYS_BY_NETLINK,
  REVOCATION,
} from '../helpers/held-sockets.js';
import { createWorld, type World } from '../helpers/world.js';

/** Every test below, once with the mechanism the kernel offers first and once by netlink SOCK_DESTROY. */
function suite(via: 'auto' | 'netlink'): void {
  let world: World;
  let enforcer: Enforcer;
  let hostEchoPort = 0;

  const UNRESTRICTED: Policy = { mode: 'unrestricted', rules: [] };

  /** A computer attached unrestricted (connections open freely) at world cgroup `name`. */
  function computer(name: string): { id: string; cgroup: string } {
    const cg = world.makeCgroup(name);
    enforcer.attach(name, cg.relative, UNRESTRICTED, 1n);
    return { id: name, cgroup: cg.relative };
  }

  /** Applies `policy` as version `version`, then one revocation pass: what it closed. */
  async function tighten(
    c: { id: string; cgroup: string },
    policy: Policy,
    version: bigint,
  ): Promise<RevokedRecord[]> {
    enforcer.apply(c.id, policy, version);
    return (await enforcer.revoke([c])).get(c.id) ?? [];
  }

  /** "a.b.c.d:port" or "[v6]:port" of each record. */
  function peers(records: RevokedRecord[]): string[] {
    return records
      .map((r) => {
        const a = r.address;
        const host =
          a.length === 4
            ? a.join('.')
            : `[${Array.from({ length: 8 }, (_, i) => (((a[2 * i] ?? 0) << 8) | (a[2 * i + 1] ?? 0)).toString(16)).join(':')}]`;
        return `${r.protocol === 6 ? 'tcp' : 'udp'}:${host}:${r.port}`;
      })
      .sort();
  }

  /** What a socket's try gives once it is closed: an error at once, not "ok" nor a timeout. */
  function refused(result: string | undefined): boolean {
    return result !== undefined && result !== 'ok' && result !== 'timeout';
  }

  test.before(async () => {
    world = await createWorld();
    const revocation = via === 'netlink' ? 'netlink' : true;
    enforcer = Enforcer.open({ pinDir: world.pinDir, cgroupRoot: world.cgroupMount, revocation });
    if (REVOCATION !== undefined && enforcer.revocation !== 'on') {
      throw new Error(
        `Linux ${release()} should revoke (${REVOCATION}), yet egressd cannot: ${enforcer.revocationProblem}`,
      );
    }
    hostEchoPort = 20_000 + Math.floor(Math.random() * 20_000);
    await echoServer(world, true);
    await echoServer(world, false, hostEchoPort);
  });

  test.after.always(async () => {
    enforcer?.close();
    await world?.destroy();
  });

  if (REVOCATION === undefined) {
    test.serial(
      `${via}: Linux ${release()} (before 6.5, no SOCK_DESTROY): revocation is "unsupported", says why, and closes nothing`,
      async (t) => {
        t.is(enforcer.revocation, 'unsupported');
        t.regex(enforcer.revocationProblem ?? '', /Linux 6\.5\+.*SOCK_DESTROY/);
        const c = computer('old-kernel');
        const h = await holdSockets(world, 'old-kernel', true, `tcp:203.0.113.6:${ECHO_PORT}`);
        t.deepEqual(await tighten(c, { mode: 'isolated', rules: [] }, 2n), []);
        t.deepEqual(
          await h.check(),
          ['ok'],
          'made before the lockdown, still open: nothing claims otherwise',
        );
      },
    );
  }

  const kernelTest = (title: string, fn: (t: ExecutionContext) => Promise<void>) =>
    (REVOCATION === undefined ? test.serial.skip : test.serial)(`${via}: ${title}`, fn);

  kernelTest('a tightened policy closes exactly the connections it refuses', async (t) => {
    const c = computer('tighten');
    const inside = await holdSockets(
      world,
      'tighten',
      true,
      `tcp:203.0.113.5:${ECHO_PORT}`,
      `tcp:203.0.113.6:${ECHO_PORT}`,
      `tcp:[2001:db8:ff::6]:${ECHO_PORT}`,
      `tcp:[::ffff:203.0.113.7]:${ECHO_PORT}`,
      `udp:203.0.113.6:${ECHO_PORT}`,
      `sendto:203.0.113.6:${ECHO_PORT}`,
    );
    // A host process with a connection to the same address: not the computer's.
    const host = await holdSockets(world, undefined, true, `tcp:203.0.113.6:${ECHO_PORT}`);
    t.deepEqual(await inside.check(), ['ok', 'ok', 'ok', 'ok', 'ok', 'ok']);

    const closed = await tighten(
      c,
      { mode: 'allowlist', rules: [{ host: '203.0.113.5', protocol: 'tcp' }] },
      2n,
    );
    t.deepEqual(peers(closed), [
      `tcp:203.0.113.6:${ECHO_PORT}`,
      `tcp:203.0.113.7:${ECHO_PORT}`,
      `tcp:[2001:db8:ff:0:0:0:0:6]:${ECHO_PORT}`,
      `udp:203.0.113.6:${ECHO_PORT}`,
    ]);
    t.true(closed.every((r) => r.error === 0));

    const after = await inside.check();
    t.is(after[0], 'ok', 'the allowed connection still echoes');
    for (const i of [1, 2, 3, 4]) t.true(refused(after[i]), `socket ${i} fails at once: ${after[i]}`);
    t.is(after[5], 'EPERM', 'the unconnected socket stays open; its datagrams are judged as always');
    t.deepEqual(await host.check(), ['ok'], "the host's connection to the same address stays");
    t.deepEqual(peers((await enforcer.revoke([c])).get(c.id) ?? []), [], 'a second pass finds nothing left');
  });

  kernelTest('isolated closes every connection; a child cgroup is the computer too', async (t) => {
    const c = computer('iso');
    world.makeCgroup('iso/child');
    const parent = await holdSockets(world, 'iso', true, `tcp:203.0.113.5:${ECHO_PORT}`);
    const child = await holdSockets(
      world,
      'iso/child',
      true,
      `tcp:203.0.113.9:${ECHO_PORT}`,
      `udp:[2001:db8:ff::9]:${ECHO_PORT}`,
    );
    t.deepEqual([...(await parent.check()), ...(await child.check())], ['ok', 'ok', 'ok']);
    t.is((await tighten(c, { mode: 'isolated', rules: [] }, 2n)).length, 3);
    const after = [...(await parent.check()), ...(await child.check())];
    t.true(after.every(refused), after.join(' '));
  });

  kernelTest(
    'other computers keep their connections; unrestricted and loosening close nothing',
    async (t) => {
      const a = computer('mine');
      const b = computer('theirs');
      const mine = await holdSockets(world, 'mine', true, `tcp:203.0.113.6:${ECHO_PORT}`);
      const theirs = await holdSockets(world, 'theirs', true, `tcp:203.0.113.6:${ECHO_PORT}`);
      t.deepEqual(await tighten(a, UNRESTRICTED, 2n), [], 'unrestricted refuses nothing');
      t.deepEqual(
        await tighten(a, { mode: 'denylist', rules: [{ host: '192.0.2.0/24', protocol: 'any' }] }, 3n),
        [],
        'a denylist that does not name the peer',
      );
      t.is((await tighten(a, { mode: 'isolated', rules: [] }, 4n)).length, 1);
      t.true(refused((await mine.check())[0]));
      t.deepEqual(await theirs.check(), ['ok'], 'another computer is not touched');
      // Both in one pass: each gets its own.
      enforcer.apply(b.id, { mode: 'isolated', rules: [] }, 2n);
      const both = await enforcer.revoke([a, b]);
      t.is(both.get(a.id)?.length, 0);
      t.is(both.get(b.id)?.length, 1);
    },
  );

  kernelTest(
    'a dropped hostname rule closes its connections; a kept one (even past its TTL) does not',
    async (t) => {
      const c = computer('names');
      const named: Policy = {
        mode: 'allowlist',
        rules: [
          { host: 'kept.test', protocol: 'tcp' },
          { host: 'dropped.test', protocol: 'tcp' },
        ],
      };
      enforcer.apply(c.id, named, 2n);
      // Long enough for the holder to connect (a node process: seconds under emulation), then it runs out.
      const ttlS = 3 * SCALE;
      const learnedAt = Date.now();
      enforcer.learn(c.id, ['kept.test'], [[203, 0, 113, 21]], ttlS);
      enforcer.learn(c.id, ['dropped.test'], [[203, 0, 113, 22]], 300);
      const h = await holdSockets(
        world,
        'names',
        true,
        `tcp:203.0.113.21:${ECHO_PORT}`,
        `tcp:203.0.113.22:${ECHO_PORT}`,
      );
      t.deepEqual(await h.check(), ['ok', 'ok']);
      // kept.test's address expires.
      await new Promise((r) => setTimeout(r, Math.max(0, learnedAt + ttlS * 1000 + 500 - Date.now())));
      t.deepEqual(
        await world.probeResults({ cgroup: 'names' }, `tcp:203.0.113.21:${ECHO_PORT}`),
        ['EPERM'],
        'expired',
      );
      const closed = await tighten(
        c,
        {
          mode: 'allowlist',
          rules: [
            { host: 'kept.test', protocol: 'tcp' },
            { host: '192.0.2.1', protocol: 'tcp' },
          ],
        },
        3n,
      );
      t.deepEqual(peers(closed), [`tcp:203.0.113.22:${ECHO_PORT}`]);
      const after = await h.check();
      t.is(after[0], 'ok', 'an expired address of a name still listed keeps its connection');
      t.true(refused(after[1]));
    },
  );

  kernelTest(
    'attaching a computer to a cgroup whose processes already talk closes what its policy refuses',
    async (t) => {
      const cg = world.makeCgroup('late');
      const h = await holdSockets(
        world,
        'late',
        true,
        `tcp:203.0.113.5:${ECHO_PORT}`,
        `tcp:203.0.113.6:${ECHO_PORT}`,
      );
      const policy: Policy = { mode: 'allowlist', rules: [{ host: '203.0.113.5', protocol: 'tcp' }] };
      t.true(enforcer.attach('late', cg.relative, policy, 1n).changed);
      t.deepEqual(peers((await enforcer.revoke([{ id: 'late', cgroup: cg.relative }])).get('late') ?? []), [
        `tcp:203.0.113.6:${ECHO_PORT}`,
      ]);
      const after = await h.check();
      t.is(after[0], 'ok');
      t.true(refused(after[1]));
      t.false(
        enforcer.attach('late', cg.relative, policy, 1n).changed,
        'the same version again changes nothing',
      );
    },
  );

  kernelTest('a computer in audit keeps its connections: they would be let through', async (t) => {
    const c = computer('audited');
    const h = await holdSockets(world, 'audited', true, `tcp:203.0.113.6:${ECHO_PORT}`);
    t.deepEqual(await tighten(c, { mode: 'isolated', rules: [], audit: true }, 2n), []);
    t.deepEqual(await h.check(), ['ok']);
    t.is((await tighten(c, { mode: 'isolated', rules: [] }, 3n)).length, 1, 'audit off: closed');
    t.true(refused((await h.check())[0]));
  });

  kernelTest("a computer in the agent's namespace: its loopback connections are judged too", async (t) => {
    const c = computer('agentns');
    const h = await holdSockets(
      world,
      'agentns',
      false,
      `tcp:127.0.0.1:${hostEchoPort}`,
      `udp:[::1]:${hostEchoPort}`,
    );
    t.deepEqual(await h.check(), ['ok', 'ok']);
    t.is(
      (await tighten(c, { mode: 'allowlist', rules: [{ host: '192.0.2.1', protocol: 'tcp' }] }, 2n)).length,
      2,
    );
    const after = await h.check();
    t.true(after.every(refused), after.join(' '));
  });

  test.serial(`${via}: revocation off: the enforcer says so and closes nothing`, async (t) => {
    const off = Enforcer.open({ pinDir: world.pinDir, cgroupRoot: world.cgroupMount, revocation: false });
    try {
      t.is(off.revocation, 'off');
      t.deepEqual(
        [...(await off.revoke([{ id: 'tighten', cgroup: world.cgroupRelative('tighten') }])).values()],
        [],
      );
    } finally {
      off.close();
    }
  });
}

suite('auto');
if (KERNEL_DESTROYS_BY_NETLINK) suite('netlink');
