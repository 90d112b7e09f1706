/**
 * Deny events: exactly one per refused call, with the computer, process,
 * destination and reason, and the hostname when the computer's DNS taught
 * it the address; nothing for allowed calls; the rate limit counts drops.
 */
import test from 'ava';
import type { DnsProxy } from '../../daemon/dns/proxy.js';
import { DenyEvents, type DenyRecord } from '../../daemon/events.js';
import { Enforcer } from '../../daemon/kernel/enforcer.js';
import { testDnsProxy } from '../helpers/dns-proxy.js';
import { type Dnsmasq, startDnsmasq } from '../helpers/dnsmasq.js';
import { createWorld, type World } from '../helpers/world.js';

let world: World;
let enforcer: Enforcer;
let events: DenyEvents;
let dnsmasq: Dnsmasq;
let proxy: DnsProxy;
const seen: DenyRecord[] = [];

test.before(async () => {
  world = await createWorld({ gateway: true });
  dnsmasq = await startDnsmasq(['host-record=denied.test,203.0.113.66,300']);
  enforcer = Enforcer.open({ pinDir: world.pinDir, cgroupRoot: world.cgroupMount });
  enforcer.setDnsConfig([45000, 45999], world.gateway!.host4, world.gateway!.host6);
  proxy = testDnsProxy(world, enforcer, dnsmasq, [45000, 45999]);
  events = new DenyEvents({ enforcer, ratePerSecond: 5, burst: 10, sink: (r) => seen.push(r) });
});

test.after.always(async () => {
  events?.close();
  await proxy?.close();
  enforcer?.close();
  await dnsmasq?.stop();
  await world?.destroy();
});

function take(computer: string): DenyRecord[] {
  events.poll();
  const mine = seen.filter((r) => r.computer === computer);
  for (const r of mine) seen.splice(seen.indexOf(r), 1);
  return mine;
}

test.serial(
  'a refused connect makes exactly one event with its fields; an allowed one makes none',
  async (t) => {
    const cg = world.makeCgroup('ev1');
    enforcer.attach(
      'ev1',
      cg.relative,
      { mode: 'allowlist', rules: [{ host: '192.0.2.1', protocol: 'tcp' }] },
      1n,
      {
        port: await proxy.ensure('ev1'),
      },
    );
    t.deepEqual(
      await world.probeResults({ cgroup: cg.path }, 'tcp:192.0.2.1:80', 'udp-sendto:[2001:db8::2]:443'),
      ['ok', 'EPERM'],
    );
    const got = take('ev1');
    t.is(got.length, 1);
    t.like(got[0], {
      computer: 'ev1',
      comm: 'probe',
      family: 'ipv6',
      protocol: 'udp',
      address: '2001:db8::2',
      port: 443,
      reason: 'mode',
      hostname: null,
    });
    t.true((got[0]?.pid ?? 0) > 1);
    t.true(Math.abs(Date.parse(got[0]?.at ?? '') - Date.now()) < 10_000, 'the time is wall-clock time');
  },
);

test.serial('denylist: the event names the hostname the computer resolved, and the deny rule', async (t) => {
  const cg = world.makeCgroup('ev2');
  enforcer.attach(
    'ev2',
    cg.relative,
    { mode: 'denylist', rules: [{ host: 'denied.test', protocol: 'any' }] },
    1n,
    {
      port: await proxy.ensure('ev2'),
    },
  );
  const dig = await world.run('dig', ['@192.0.2.53', '+tries=1', '+time=2', 'denied.test', 'A'], {
    cgroup: cg.path,
  });
  t.regex(dig.out, /NXDOMAIN/);
  t.deepEqual(await world.probeResults({ cgroup: cg.path }, 'tcp:203.0.113.66:443', 'raw4'), [
    'EPERM',
    'EPERM',
  ]);
  const got = take('ev2');
  t.is(got.length, 2);
  t.like(got[0], {
    address: '203.0.113.66',
    port: 443,
    protocol: 'tcp',
    reason: 'rule',
    hostname: 'denied.test',
  });
  t.like(got[1], { family: null, address: null, reason: 'socket' });
});

test.serial('the per-computer rate limit drops and counts the excess', async (t) => {
  const cg = world.makeCgroup('ev3');
  enforcer.attach('ev3', cg.relative, { mode: 'isolated', rules: [] }, 1n);
  const results = await world.probeResults({ cgroup: cg.path }, ...Array(30).fill('tcp:192.0.2.1:80'));
  t.is(results.filter((r) => r === 'EPERM').length, 30);
  const got = take('ev3');
  t.true(got.length >= 10 && got.length < 30, `${got.length} delivered`);
  t.is(
    got.length + (events.dropped.get('ev3') ?? 0),
    30,
    'every refusal is either delivered or counted as dropped',
  );
});

test.serial(
  'events the kernel wrote while no agent ran name their computer when the next agent reads them, before it attaches anything',
  async (t) => {
    const cg = world.makeCgroup('ev-down');
    enforcer.attach('ev-down', cg.relative, { mode: 'isolated', rules: [] }, 1n);
    events.poll();
    // The agent goes: its reader and enforcer close, the pins stay and keep refusing (and reporting).
    events.close();
    enforcer.close();
    t.deepEqual(await world.probeResults({ cgroup: cg.path }, 'tcp:192.0.2.1:81'), ['EPERM']);
    // The next agent: it adopts the pins and reads the ring buffer before any resync attaches ev-down.
    enforcer = Enforcer.open({ pinDir: world.pinDir, cgroupRoot: world.cgroupMount });
    t.true(enforcer.adopted);
    const after: DenyRecord[] = [];
    events = new DenyEvents({ enforcer, sink: (r) => after.push(r) });
    events.poll();
    t.like(
      after.find((r) => r.port === 81),
      { computer: 'ev-down', reason: 'mode' },
    );
    // Once attached by this process, and after it detached it, the index agrees.
    enforcer.attach('ev-down', cg.relative, { mode: 'isolated', rules: [] }, 2n);
    t.is(enforcer.computerAt(enforcer.attachedCgroupId('ev-down') ?? 0n), 'ev-down');
    const cgroupId = enforcer.attachedCgroupId('ev-down') ?? 0n;
    enforcer.detach('ev-down');
    t.is(enforcer.computerAt(cgroupId), undefined);
  },
);
