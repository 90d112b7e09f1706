/**
 * Hostname rules end to end: real dnsmasq upstream, the DNS proxy, BPF
 * redirect and learned maps, computers in the world's own network namespace
 * (through the gateway address) and in the host's. `dig` is the application:
 * it checks that replies come from the resolver it asked (192.0.2.53, which
 * does not exist: the hooks redirect it). Serial: the last tests stop the
 * proxy and the upstream.
 */
import test from 'ava';
import { pino } from 'pino';
import { DnsProxy } from '../../daemon/src/dns/proxy.js';
import { Enforcer } from '../../daemon/src/enforcer.js';
import type { Policy } from '../../daemon/src/policy/types.js';
import { type Dnsmasq, startDnsmasq } from '../helpers/dnsmasq.js';
import { createWorld, type World } from '../helpers/world.js';

let world: World;
let dnsmasq: Dnsmasq;
let enforcer: Enforcer;
let proxy: DnsProxy;
let counter = 0;
const PORTS: [number, number] = [42000, 42999];
const log = pino({ level: process.env['EGRESSD_TEST_LOG'] ?? 'silent' });

function startProxy(): DnsProxy {
  const gw = world.gateway!;
  return new DnsProxy({
    enforcer,
    upstreams: [{ host: dnsmasq.host, port: dnsmasq.port }],
    listen: ['127.0.0.1', '::1', gw.host4, gw.host6],
    portRange: PORTS,
    ttlFloor: 1,
    ttlCeiling: 3600,
    timeoutMs: 2000,
    log,
  });
}

test.before(async () => {
  world = await createWorld({ gateway: true });
  const gw = world.gateway!;
  dnsmasq = await startDnsmasq([
    'host-record=allowed.test,203.0.113.31,2001:db8:ff::31,300',
    'host-record=other.test,203.0.113.30,2001:db8:ff::30,300',
    'host-record=www.wild.test,203.0.113.32,300',
    'host-record=wild.test,203.0.113.33,300',
    'cname=alias.test,mid.test,60',
    'cname=mid.test,target.test,60',
    'host-record=target.test,203.0.113.10,120',
    'host-record=short.test,203.0.113.20,1',
    'host-record=long.test,203.0.113.21,86400',
    'host-record=shared-a.test,203.0.113.40,3000',
    'host-record=shared-b.test,203.0.113.40,60',
    `host-record=rebind.test,${gw.host4},300`,
    ...Array.from({ length: 60 }, (_, i) => `host-record=big.test,203.0.113.${100 + i}`),
  ]);
  enforcer = Enforcer.open({ pinDir: world.pinDir, cgroupRoot: world.cgroupMount });
  enforcer.setDnsConfig(PORTS, gw.host4, gw.host6);
  proxy = startProxy();
});

test.after.always(async () => {
  await proxy?.close();
  enforcer?.close();
  await dnsmasq?.stop();
  await world?.destroy();
});

async function computer(policy: Policy): Promise<{ id: string; cgroup: string }> {
  const id = `d${++counter}`;
  const cg = world.makeCgroup(id);
  const port = await proxy.ensure(id);
  enforcer.attach(id, cg.relative, policy, 1n, { port, blockDns: policy.blockDns === true });
  return { id, cgroup: cg.path };
}

/** Runs dig in the computer (world namespace unless netns is false); stdout lines and exit code. */
async function dig(
  cgroup: string,
  args: string[],
  netns = true,
): Promise<{ code: number; lines: string[]; out: string }> {
  // Any resolver address will do (the hooks redirect it); in the host namespace a loopback one,
  // so that nothing could leave this host even if the redirect failed.
  const server = netns ? '@192.0.2.53' : '@127.0.0.53';
  const { code, out } = await world.run('dig', [server, '+tries=1', '+time=2', ...args], { cgroup, netns });
  return { code, out, lines: out.split('\n').filter((l) => l.trim() !== '') };
}

const short = (cgroup: string, name: string, type = 'A', ...more: string[]) =>
  dig(cgroup, ['+short', name, type, ...more]).then((r) => r.lines);

test.serial(
  'allowlisted names resolve and connect at once (A and AAAA, UDP and TCP); others resolve but cannot connect',
  async (t) => {
    const c = await computer({
      mode: 'allowlist',
      rules: [{ host: 'allowed.test', port: 80, protocol: 'tcp' }],
    });
    t.deepEqual(await short(c.cgroup, 'allowed.test'), ['203.0.113.31']);
    t.deepEqual(
      await world.probeResults({ cgroup: c.cgroup }, 'tcp:203.0.113.31:80', 'tcp:203.0.113.31:443'),
      ['ok', 'EPERM'],
    );
    t.deepEqual(await short(c.cgroup, 'allowed.test', 'AAAA', '+tcp'), ['2001:db8:ff::31']);
    t.deepEqual(await world.probeResults({ cgroup: c.cgroup }, 'tcp:[2001:db8:ff::31]:80'), ['ok']);
    t.deepEqual(await short(c.cgroup, 'other.test'), ['203.0.113.30'], 'a name not allowed still resolves');
    t.deepEqual(await world.probeResults({ cgroup: c.cgroup }, 'tcp:203.0.113.30:80'), ['EPERM']);
    t.true(
      enforcer.learnedNames(c.id).some((l) => l.name === 'allowed.test' && l.address === '203.0.113.31'),
    );
    t.false(enforcer.learnedNames(c.id).some((l) => l.name === 'other.test'));
  },
);

test.serial(
  'a TCP query, and a UDP answer too big for 512 bytes (TC, then TCP), go through the proxy',
  async (t) => {
    const c = await computer({ mode: 'allowlist', rules: [{ host: 'big.test', protocol: 'tcp' }] });
    const big = await short(c.cgroup, 'big.test', 'A', '+noedns');
    t.is(big.length, 60, 'the truncated UDP answer was retried over TCP and came back whole');
    t.deepEqual(await world.probeResults({ cgroup: c.cgroup }, 'tcp:203.0.113.159:80'), ['ok']);
    const edns = await short(c.cgroup, 'big.test', 'A', '+bufsize=4096');
    t.is(edns.length, 60, 'EDNS0 lets the whole answer through over UDP');
  },
);

test.serial('a wildcard matches names below it, not the apex', async (t) => {
  const c = await computer({ mode: 'allowlist', rules: [{ host: '*.wild.test', protocol: 'any' }] });
  t.deepEqual(await short(c.cgroup, 'WWW.Wild.Test'), ['203.0.113.32']);
  t.deepEqual(await short(c.cgroup, 'wild.test'), ['203.0.113.33']);
  t.deepEqual(await world.probeResults({ cgroup: c.cgroup }, 'tcp:203.0.113.32:80', 'tcp:203.0.113.33:80'), [
    'ok',
    'EPERM',
  ]);
});

test.serial('a CNAME chain: the addresses at its end are learned for the name asked', async (t) => {
  const c = await computer({ mode: 'allowlist', rules: [{ host: 'alias.test', protocol: 'tcp' }] });
  t.deepEqual(await short(c.cgroup, 'alias.test'), ['mid.test.', 'target.test.', '203.0.113.10']);
  t.deepEqual(await world.probeResults({ cgroup: c.cgroup }, 'tcp:203.0.113.10:80'), ['ok']);
  const d = await computer({ mode: 'allowlist', rules: [{ host: 'target.test', protocol: 'tcp' }] });
  t.deepEqual(await short(d.cgroup, 'alias.test'), ['mid.test.', 'target.test.', '203.0.113.10']);
  t.deepEqual(
    await world.probeResults({ cgroup: d.cgroup }, 'tcp:203.0.113.10:80'),
    ['ok'],
    'a listed name inside the chain counts',
  );
});

test.serial('learned addresses expire with the TTL (clamped to the floor)', async (t) => {
  const c = await computer({ mode: 'allowlist', rules: [{ host: 'short.test', protocol: 'tcp' }] });
  t.deepEqual(await short(c.cgroup, 'short.test'), ['203.0.113.20']);
  t.deepEqual(await world.probeResults({ cgroup: c.cgroup }, 'tcp:203.0.113.20:80'), ['ok']);
  await new Promise((r) => setTimeout(r, 1500));
  t.deepEqual(await world.probeResults({ cgroup: c.cgroup }, 'tcp:203.0.113.20:80'), ['EPERM']);
  t.true(enforcer.expireLearned() >= 1);
});

test.serial('no answer is cached longer than its addresses are learned (the TTL ceiling)', async (t) => {
  const c = await computer({ mode: 'allowlist', rules: [{ host: 'long.test', protocol: 'tcp' }] });
  const { lines } = await dig(c.cgroup, ['+noall', '+answer', 'long.test', 'A']);
  t.is(lines.length, 1);
  const ttl = Number(lines[0]!.split(/\s+/)[1]);
  t.is(ttl, 3600, `the upstream said 86400; the proxy's ceiling is 3600: ${lines[0]}`);
  const learned = enforcer.learnedNames(c.id).find((l) => l.name === 'long.test');
  t.truthy(learned);
  t.true(learned!.expiresInS > 3590 && learned!.expiresInS <= 3600);
});

test.serial(
  'a name asked again within its lifetime is not written again; its TTL counts down instead',
  async (t) => {
    const c = await computer({ mode: 'allowlist', rules: [{ host: 'allowed.test', protocol: 'tcp' }] });
    const ttlOf = async () => {
      const { lines } = await dig(c.cgroup, ['+noall', '+answer', 'allowed.test', 'A']);
      return Number(lines[0]?.split(/\s+/)[1]);
    };
    t.is(await ttlOf(), 300);
    const writes = proxy.stats.learned;
    const again = await ttlOf();
    t.true(again === 299 || again === 300, `TTL ${again}`);
    t.is(proxy.stats.learned, writes, 'no second map write');
    t.deepEqual(await world.probeResults({ cgroup: c.cgroup }, 'tcp:203.0.113.31:80'), ['ok']);
  },
);

test.serial(
  'an address two names share stays learned for both, as long as the longer-lived answer',
  async (t) => {
    const both = {
      mode: 'allowlist' as const,
      rules: [
        { host: 'shared-a.test', protocol: 'tcp' as const },
        { host: 'shared-b.test', protocol: 'tcp' as const },
      ],
    };
    const c = await computer(both);
    t.deepEqual(await short(c.cgroup, 'shared-a.test'), ['203.0.113.40']);
    const { lines } = await dig(c.cgroup, ['+noall', '+answer', 'shared-b.test', 'A']);
    t.is(Number(lines[0]?.split(/\s+/)[1]), 60, "shared-b's own TTL");
    const entry = enforcer.learnedNames(c.id).find((l) => l.address === '203.0.113.40');
    t.true(
      (entry?.expiresInS ?? 0) > 2900,
      "not shortened to shared-b's 60 s: a client of shared-a may use it",
    );
    // A policy without shared-b keeps the address: shared-a taught it too.
    enforcer.attach(c.id, world.cgroupRelative(c.id), { mode: 'allowlist', rules: [both.rules[0]!] }, 2n, {
      port: proxy.portOf(c.id) ?? 0,
    });
    t.deepEqual(await world.probeResults({ cgroup: c.cgroup }, 'tcp:203.0.113.40:80'), ['ok']);
    enforcer.attach(c.id, world.cgroupRelative(c.id), { mode: 'allowlist', rules: [both.rules[1]!] }, 3n, {
      port: proxy.portOf(c.id) ?? 0,
    });
    t.deepEqual(
      await world.probeResults({ cgroup: c.cgroup }, 'tcp:203.0.113.40:80'),
      ['ok'],
      'nor without shared-a',
    );
    enforcer.attach(
      c.id,
      world.cgroupRelative(c.id),
      { mode: 'allowlist', rules: [{ host: 'other.test', protocol: 'tcp' }] },
      4n,
      {
        port: proxy.portOf(c.id) ?? 0,
      },
    );
    t.deepEqual(
      await world.probeResults({ cgroup: c.cgroup }, 'tcp:203.0.113.40:80'),
      ['EPERM'],
      'but with neither',
    );
  },
);

test.serial('two computers with different policies asking for the same name', async (t) => {
  const a = await computer({ mode: 'allowlist', rules: [{ host: 'allowed.test', protocol: 'tcp' }] });
  const b = await computer({ mode: 'allowlist', rules: [{ host: 'other.test', protocol: 'tcp' }] });
  t.deepEqual(await short(a.cgroup, 'allowed.test'), ['203.0.113.31']);
  t.deepEqual(await short(b.cgroup, 'allowed.test'), ['203.0.113.31']);
  t.deepEqual(await world.probeResults({ cgroup: a.cgroup }, 'tcp:203.0.113.31:80'), ['ok']);
  t.deepEqual(
    await world.probeResults({ cgroup: b.cgroup }, 'tcp:203.0.113.31:80'),
    ['EPERM'],
    'learned addresses belong to one computer',
  );
});

test.serial(
  'denylist: denied names get NXDOMAIN and their addresses are denied; others resolve and connect',
  async (t) => {
    const c = await computer({ mode: 'denylist', rules: [{ host: 'other.test', protocol: 'any' }] });
    const denied = await dig(c.cgroup, ['other.test', 'A']);
    t.regex(denied.out, /status: NXDOMAIN/);
    t.deepEqual(await world.probeResults({ cgroup: c.cgroup }, 'tcp:203.0.113.30:80'), ['EPERM']);
    t.deepEqual(await short(c.cgroup, 'allowed.test'), ['203.0.113.31']);
    t.deepEqual(await world.probeResults({ cgroup: c.cgroup }, 'tcp:203.0.113.31:80'), ['ok']);
  },
);

test.serial('isolated: DNS is answered but nothing connects; with blockDns no DNS at all', async (t) => {
  const c = await computer({ mode: 'isolated', rules: [] });
  t.deepEqual(await short(c.cgroup, 'allowed.test'), ['203.0.113.31']);
  t.deepEqual(await world.probeResults({ cgroup: c.cgroup }, 'tcp:203.0.113.31:80'), ['EPERM']);
  const blocked = await computer({ mode: 'isolated', rules: [], blockDns: true });
  const r = await dig(blocked.cgroup, ['allowed.test', 'A']);
  t.not(r.code, 0);
  t.notRegex(r.out, /203\.0\.113\.31/);
  t.deepEqual(
    await world.probeResults({ cgroup: blocked.cgroup }, 'udp-sendto:192.0.2.53:53', 'tcp:192.0.2.53:53'),
    ['EPERM', 'EPERM'],
  );
});

test.serial('DNS rebinding: an allowed name that resolves to this host is not learned', async (t) => {
  const c = await computer({ mode: 'allowlist', rules: [{ host: 'rebind.test', protocol: 'any' }] });
  t.deepEqual(await short(c.cgroup, 'rebind.test'), [world.gateway!.host4]);
  t.deepEqual(await world.probeResults({ cgroup: c.cgroup }, `tcp:${world.gateway!.host4}:80`), ['EPERM']);
});

test.serial(
  'a policy change drops what names no longer allowed taught, at once, and keeps the rest',
  async (t) => {
    const both: Policy = {
      mode: 'allowlist',
      rules: [
        { host: 'allowed.test', protocol: 'tcp' },
        { host: 'other.test', protocol: 'tcp' },
      ],
    };
    const c = await computer(both);
    t.deepEqual(await short(c.cgroup, 'allowed.test'), ['203.0.113.31']);
    t.deepEqual(await short(c.cgroup, 'other.test'), ['203.0.113.30']);
    t.deepEqual(
      await world.probeResults({ cgroup: c.cgroup }, 'tcp:203.0.113.31:80', 'tcp:203.0.113.30:80'),
      ['ok', 'ok'],
    );
    enforcer.apply(c.id, { mode: 'allowlist', rules: [{ host: 'allowed.test', protocol: 'tcp' }] }, 2n);
    t.deepEqual(
      await world.probeResults({ cgroup: c.cgroup }, 'tcp:203.0.113.31:80', 'tcp:203.0.113.30:80'),
      ['ok', 'EPERM'],
    );
  },
);

test.serial('a computer in the host network namespace resolves through the proxy on loopback', async (t) => {
  const c = await computer({ mode: 'allowlist', rules: [{ host: 'allowed.test', protocol: 'tcp' }] });
  const r = await dig(c.cgroup, ['+short', 'allowed.test', 'AAAA'], false);
  t.deepEqual(r.lines, ['2001:db8:ff::31'], r.out);
  t.true(enforcer.learnedNames(c.id).some((l) => l.address === '2001:db8:ff::31'));
  // The proxy ports themselves are not reachable directly.
  const direct = await world.probeResults(
    { cgroup: c.cgroup, netns: false },
    `udp-sendto:127.0.0.1:${proxy.portOf(c.id)}`,
  );
  t.deepEqual(direct, ['EPERM']);
});

test.serial(
  'learned addresses survive a restart of the agent, and no answer is released while the proxy is down',
  async (t) => {
    const c = await computer({ mode: 'allowlist', rules: [{ host: 'allowed.test', protocol: 'tcp' }] });
    t.deepEqual(await short(c.cgroup, 'allowed.test'), ['203.0.113.31']);
    const port = proxy.portOf(c.id) ?? 0;
    await proxy.close();
    enforcer.close();
    // No agent: the learned address stays in force, but no DNS answer comes.
    t.deepEqual(await world.probeResults({ cgroup: c.cgroup }, 'tcp:203.0.113.31:80'), ['ok']);
    const silent = await dig(c.cgroup, ['other.test', 'A']);
    t.not(silent.code, 0, 'no answer without the proxy');
    t.notRegex(silent.out, /203\.0\.113\.30/);
    // A new agent adopts the pins and the learned entries, on the same proxy port.
    enforcer = Enforcer.open({ pinDir: world.pinDir, cgroupRoot: world.cgroupMount });
    proxy = startProxy();
    t.is(await proxy.ensure(c.id, enforcer.state(c.id)?.dnsPort), port);
    enforcer.attach(
      c.id,
      world.cgroupRelative(c.id),
      { mode: 'allowlist', rules: [{ host: 'allowed.test', protocol: 'tcp' }] },
      1n,
      { port },
    );
    t.deepEqual(await world.probeResults({ cgroup: c.cgroup }, 'tcp:203.0.113.31:80'), ['ok']);
    t.true(enforcer.learnedNames(c.id).some((l) => l.address === '203.0.113.31'));
    t.deepEqual(await short(c.cgroup, 'other.test'), ['203.0.113.30']);
  },
);

test.serial('the proxy answers SERVFAIL (and counts it) when the upstream does not answer', async (t) => {
  const c = await computer({ mode: 'allowlist', rules: [{ host: 'allowed.test', protocol: 'tcp' }] });
  await dnsmasq.stop();
  const before = proxy.stats.failClosed;
  const r = await dig(c.cgroup, ['allowed.test', 'A', '+time=4']);
  t.regex(r.out, /status: SERVFAIL/);
  t.is(proxy.stats.failClosed, before + 1);
  t.deepEqual(await world.probeResults({ cgroup: c.cgroup }, 'tcp:203.0.113.31:80'), ['EPERM']);
});
