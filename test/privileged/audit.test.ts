/**
 * Audit mode in the kernel: a computer whose policy is in audit is judged
 * exactly as in enforcement, but what its policy would refuse is let through,
 * each with a deny event marked audit and the reason it would have been
 * refused; switching audit off is an ordinary atomic replace. Real programs,
 * a real probe in the world namespace.
 */
import test from 'ava';
import { DenyEvents, type DenyRecord } from '../../daemon/events.js';
import { Enforcer } from '../../daemon/kernel/enforcer.js';
import type { Policy } from '../../policy/types.js';
import { createWorld, type World } from '../helpers/world.js';

let world: World;
let enforcer: Enforcer;
let events: DenyEvents;
const seen: DenyRecord[] = [];

test.before(async () => {
  world = await createWorld();
  enforcer = Enforcer.open({ pinDir: world.pinDir, cgroupRoot: world.cgroupMount });
  events = new DenyEvents({ enforcer, ratePerSecond: 1000, burst: 1000, sink: (r) => seen.push(r) });
});

test.after.always(async () => {
  events?.close();
  enforcer?.close();
  await world?.destroy();
});

/** The events of `computer` so far, taken off the list. */
function take(computer: string): DenyRecord[] {
  events.poll();
  const mine = seen.filter((r) => r.computer === computer);
  for (const r of mine) seen.splice(seen.indexOf(r), 1);
  return mine;
}

const ALLOW_ONE: Policy = { mode: 'allowlist', rules: [{ host: '192.0.2.1', protocol: 'tcp' }] };

test.serial(
  'allowlist in audit: what it would refuse goes through, each with an audit event and its reason',
  async (t) => {
    const cg = world.makeCgroup('audited');
    enforcer.attach('audited', cg.relative, { ...ALLOW_ONE, audit: true }, 1n);
    t.deepEqual(
      await world.probeResults(
        { cgroup: cg.path },
        'tcp:192.0.2.1:80',
        'tcp:192.0.2.2:80',
        'udp-sendto:[2001:db8::2]:80',
        'tcp6-mapped:198.51.100.1:80',
        'raw4',
      ),
      ['ok', 'ok', 'ok', 'ok', 'ok'],
      'nothing is refused',
    );
    const got = take('audited');
    t.deepEqual(
      got.map((e) => [e.reason, e.protocol, e.address, e.audit]),
      [
        ['mode', 'tcp', '192.0.2.2', true],
        ['mode', 'udp', '2001:db8::2', true],
        ['mode', 'tcp', '::ffff:c633:6401', true],
        ['socket', 'icmp', null, true],
      ],
      'the allowed destination makes no event; each would-be refusal one, marked audit',
    );
  },
);

test.serial('audit off is an ordinary atomic replace: refused from the next connect on', async (t) => {
  const cg = world.makeCgroup('switched');
  enforcer.attach('switched', cg.relative, { ...ALLOW_ONE, audit: true }, 1n);
  t.deepEqual(await world.probeResults({ cgroup: cg.path }, 'tcp:192.0.2.2:80'), ['ok']);
  enforcer.apply('switched', ALLOW_ONE, 2n);
  t.deepEqual(await world.probeResults({ cgroup: cg.path }, 'tcp:192.0.2.2:80', 'tcp:192.0.2.1:80'), [
    'EPERM',
    'ok',
  ]);
  t.deepEqual(
    take('switched').map((e) => e.audit),
    [true, false],
  );
  enforcer.apply('switched', { ...ALLOW_ONE, audit: true }, 3n);
  t.deepEqual(await world.probeResults({ cgroup: cg.path }, 'tcp:192.0.2.2:80'), ['ok'], 'and back on');
});

test.serial("audit is the computer's own: another computer with the same rules is enforced", async (t) => {
  const a = world.makeCgroup('audit-a');
  const b = world.makeCgroup('audit-b');
  enforcer.attach('audit-a', a.relative, { mode: 'isolated', rules: [], audit: true }, 1n);
  enforcer.attach('audit-b', b.relative, { mode: 'isolated', rules: [] }, 1n);
  t.deepEqual(await world.probeResults({ cgroup: a.path }, 'tcp:192.0.2.1:80', 'udp-connect:192.0.2.1:80'), [
    'ok',
    'ok',
  ]);
  t.deepEqual(await world.probeResults({ cgroup: b.path }, 'tcp:192.0.2.1:80'), ['EPERM']);
  t.deepEqual(
    take('audit-a').map((e) => [e.reason, e.audit]),
    [
      ['mode', true],
      ['mode', true],
    ],
  );
  t.deepEqual(
    take('audit-b').map((e) => [e.reason, e.audit]),
    [['mode', false]],
  );
});
