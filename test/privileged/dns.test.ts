/**
 * Hostname rules end to end: real dnsmasq upstream (logging every query it
 * receives), the DNS proxy, BPF redirect and learned maps, computers in the
 * world's own network namespace (through the gateway address) and in the
 * host's. `dig` is the application: it checks that replies come from the
 * resolver it asked (192.0.2.53, which does not exist: the hooks redirect
 * it); build/resolve-glibc and build/resolve-musl time one getaddrinfo()
 * each, with a resolv.conf of their own. The proxy's refusals go to a
 * DenyEvents, as in the agent. Serial: the last tests stop the proxy and the
 * upstream.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import test from 'ava';
import dnsPacket from 'dns-packet';
import { pino } from 'pino';
import { DnsProxy } from '../../daemon/dns/proxy.js';
import { DenyEvents, type DenyRecord } from '../../daemon/events.js';
import { decodeComputer, encodeCgroupKey, encodeComputer, FLAG, LAYOUT } from '../../daemon/kernel/abi.js';
import { Enforcer } from '../../daemon/kernel/enforcer.js';
import * as bpf from '../../daemon/kernel/libbpf.js';
import type { Policy } from '../../policy/types.js';
import { type Dnsmasq, startDnsmasq } from '../helpers/dnsmasq.js';
import { createWorld, REPO_ROOT, SCALE, type World } from '../helpers/world.js';

let world: World;
let dnsmasq: Dnsmasq;
let enforcer: Enforcer;
let proxy: DnsProxy;
let events: DenyEvents;
const denied: DenyRecord[] = [];
let confDir: string;
let counter = 0;
const PORTS: [number, number] = [42000, 42999];
const log = pino({ level: process.env['EGRESSD_TEST_LOG'] ?? 'silent' });

/**
 * HTTPS RDATA (RFC 9460), hex: priority 1, target ".", alpn "h2", ipv4hint
 * 203.0.113.34, ech (key 5: ten bytes, an ECHConfigList's shape), ipv6hint
 * 2001:db8:ff::34; and priority 2, target ".", mandatory alpn and ech,
 * alpn "h3", ech.
 */
const ECH_PARAM = '0005000a0008fe0d000401020304';
const ECH_SERVICE = `0001000001000302683200040004cb007122${ECH_PARAM}0006001020010db800ff00000000000000000034`;
const ECH_MANDATORY = `000200000000040001000500010003026833${ECH_PARAM}`;

function startProxy(upstreams: Dnsmasq[] = [dnsmasq], timeoutMs = 2000): DnsProxy {
  const gw = world.gateway!;
  return new DnsProxy({
    enforcer,
    upstreams: upstreams.map((u) => ({ host: u.host, port: u.port })),
    listen: ['127.0.0.1', '::1', gw.host4, gw.host6],
    portRange: PORTS,
    ttlFloor: 1,
    ttlCeiling: 3600,
    timeoutMs,
    log,
    onDenied: (d) => events?.submit(d),
  });
}

test.before(async () => {
  world = await createWorld({ gateway: true });
  const gw = world.gateway!;
  dnsmasq = await startDnsmasq(
    [
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
      // Names a policy never lists: they must never reach the upstream in dns listed or none.
      'host-record=exfil.test,203.0.113.50,300',
      'txt-record=exfil.test,"upstream answered"',
      'txt-record=allowed.test,"upstream answered"',
      'cname=chain.test,hop.exfil.test,60',
      'host-record=hop.exfil.test,203.0.113.51,120',
      // HTTPS records with ech: stripped by the proxy, or dropped where mandatory lists it.
      `dns-rr=ech.test,65,${ECH_SERVICE}`,
      `dns-rr=ech.test,65,${ECH_MANDATORY}`,
    ],
    { logQueries: true },
  );
  enforcer = Enforcer.open({ pinDir: world.pinDir, cgroupRoot: world.cgroupMount });
  enforcer.setDnsConfig(PORTS, gw.host4, gw.host6);
  events = new DenyEvents({ enforcer, sink: (r) => denied.push(r) });
  proxy = startProxy();
  // The resolv.conf of build/resolve-*: a resolver address that does not exist (the hooks redirect it).
  confDir = mkdtempSync(path.join(tmpdir(), 'egressd-dns-test-'));
  writeFileSync(path.join(confDir, 'resolv.conf'), 'nameserver 192.0.2.53\n');
});

test.after.always(async () => {
  events?.close();
  await proxy?.close();
  enforcer?.close();
  await dnsmasq?.stop();
  await world?.destroy();
  if (confDir) rmSync(confDir, { recursive: true, force: true });
});

async function computer(policy: Policy): Promise<{ id: string; cgroup: string }> {
  const id = `d${++counter}`;
  const cg = world.makeCgroup(id);
  const port = await proxy.ensure(id);
  enforcer.attach(id, cg.relative, policy, 1n, { port });
  return { id, cgroup: cg.path };
}

/** What the upstream was asked about names under `suffix` ("TYPE name" each). */
function upstreamAsked(suffix: string): string[] {
  return dnsmasq.queries().filter((q) => q.endsWith(suffix));
}

/**
 * One getaddrinfo() of `name` in the computer (world namespace) by the
 * glibc or the musl build of test/helpers/resolve.c, with a resolv.conf
 * naming 192.0.2.53 (bind-mounted in a mount namespace of its own).
 */
async function resolve(
  cgroup: string,
  libc: 'glibc' | 'musl',
  name: string,
): Promise<{ result: string; ms: number; addresses: string[] }> {
  const bin = path.join(REPO_ROOT, 'build', `resolve-${libc}`);
  const { code, out } = await world.run(
    'unshare',
    [
      '-m',
      'sh',
      '-c',
      'mount --bind "$0" /etc/resolv.conf && exec "$@"',
      path.join(confDir, 'resolv.conf'),
      bin,
      name,
    ],
    { cgroup },
  );
  if (code !== 0) throw new Error(`resolve-${libc} ${name}: exit ${code}: ${out}`);
  return JSON.parse(out.trim().split('\n').pop() ?? '{}');
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
  'allowlisted names resolve and connect at once (A and AAAA, UDP and TCP); with dns all others resolve but cannot connect',
  async (t) => {
    const c = await computer({
      mode: 'allowlist',
      rules: [{ host: 'allowed.test', port: 80, protocol: 'tcp' }],
      dns: 'all',
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
  t.regex(
    (await dig(c.cgroup, ['wild.test', 'A'])).out,
    /status: NXDOMAIN/,
    'dns listed: the apex is not listed',
  );
  t.deepEqual(upstreamAsked(' wild.test'), [], 'nor asked upstream');
  const all = await computer({
    mode: 'allowlist',
    rules: [{ host: '*.wild.test', protocol: 'any' }],
    dns: 'all',
  });
  t.deepEqual(await short(all.cgroup, 'wild.test'), ['203.0.113.33'], 'dns all resolves it');
  t.deepEqual(await world.probeResults({ cgroup: c.cgroup }, 'tcp:203.0.113.32:80'), ['ok']);
  t.deepEqual(
    await world.probeResults({ cgroup: all.cgroup }, 'tcp:203.0.113.33:80'),
    ['EPERM'],
    'but the apex is not allowed',
  );
});

test.serial('a CNAME chain: the addresses at its end are learned for the name asked', async (t) => {
  const c = await computer({ mode: 'allowlist', rules: [{ host: 'alias.test', protocol: 'tcp' }] });
  t.deepEqual(await short(c.cgroup, 'alias.test'), ['mid.test.', 'target.test.', '203.0.113.10']);
  t.deepEqual(await world.probeResults({ cgroup: c.cgroup }, 'tcp:203.0.113.10:80'), ['ok']);
  const d = await computer({
    mode: 'allowlist',
    rules: [{ host: 'target.test', protocol: 'tcp' }],
    dns: 'all',
  });
  t.deepEqual(await short(d.cgroup, 'alias.test'), ['mid.test.', 'target.test.', '203.0.113.10']);
  t.deepEqual(
    await world.probeResults({ cgroup: d.cgroup }, 'tcp:203.0.113.10:80'),
    ['ok'],
    'dns all: a listed name inside the chain counts',
  );
  const e = await computer({ mode: 'allowlist', rules: [{ host: 'target.test', protocol: 'tcp' }] });
  t.regex(
    (await dig(e.cgroup, ['alias.test', 'A'])).out,
    /status: NXDOMAIN/,
    'dns listed: a chain that only ends at a listed name starts at an unlisted one',
  );
});

test.serial('learned addresses expire with the TTL (clamped to the floor)', async (t) => {
  const c = await computer({ mode: 'allowlist', rules: [{ host: 'short.test', protocol: 'tcp' }] });
  t.deepEqual(await short(c.cgroup, 'short.test'), ['203.0.113.20']);
  t.deepEqual(await world.probeResults({ cgroup: c.cgroup }, 'tcp:203.0.113.20:80'), ['ok']);
  await new Promise((r) => setTimeout(r, 1500));
  t.deepEqual(await world.probeResults({ cgroup: c.cgroup }, 'tcp:203.0.113.20:80'), ['EPERM']);
  t.is(enforcer.expireLearned(), 0, 'kept for revocation passes (LEARNED_GRACE_MS)');
  t.true(enforcer.expireLearned(0) >= 1);
});

test.serial('no answer is cached longer than its addresses are learned (the TTL ceiling)', async (t) => {
  const c = await computer({ mode: 'allowlist', rules: [{ host: 'long.test', protocol: 'tcp' }] });
  const { lines } = await dig(c.cgroup, ['+noall', '+answer', 'long.test', 'A']);
  t.is(lines.length, 1);
  const ttl = Number(lines[0]!.split(/\s+/)[1]);
  t.is(ttl, 3600, `the upstream said 86400; the proxy's ceiling is 3600: ${lines[0]}`);
  const learned = enforcer.learnedNames(c.id).find((l) => l.name === 'long.test');
  t.truthy(learned);
  // Seconds pass between the answer and the look (many more under emulation: SCALE).
  t.true(learned!.expiresInS > 3600 - 10 * SCALE && learned!.expiresInS <= 3600);
});

test.serial(
  'a name asked again within its lifetime is not written again; its TTL counts down instead',
  async (t) => {
    const c = await computer({ mode: 'allowlist', rules: [{ host: 'allowed.test', protocol: 'tcp' }] });
    // Asked through the proxy's own entry point, one right after the other: "again within a second"
    // must hold even under emulation, where two dig processes are seconds apart.
    const ttlOf = async (id: number) => {
      const query = dnsPacket.encode({
        type: 'query',
        id,
        flags: dnsPacket.RECURSION_DESIRED,
        questions: [{ type: 'A', name: 'allowed.test' }],
      });
      const answers = dnsPacket.decode((await proxy.handle(c.id, query, 'udp'))!).answers ?? [];
      return (answers[0] as { ttl?: number } | undefined)?.ttl;
    };
    t.is(await ttlOf(1), 300);
    const writes = proxy.stats.learned;
    const again = await ttlOf(2);
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
  const b = await computer({
    mode: 'allowlist',
    rules: [{ host: 'other.test', protocol: 'tcp' }],
    dns: 'all',
  });
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

test.serial('isolated: DNS is answered (dns all, the default) but nothing connects', async (t) => {
  const c = await computer({ mode: 'isolated', rules: [] });
  t.is(enforcer.dnsPolicyOf(c.id)?.dns, 'all');
  t.deepEqual(await short(c.cgroup, 'allowed.test'), ['203.0.113.31']);
  t.deepEqual(await world.probeResults({ cgroup: c.cgroup }, 'tcp:203.0.113.31:80'), ['EPERM']);
});

test.serial(
  'dns listed: names no hostname rule covers are answered NXDOMAIN by the proxy (A and TXT, UDP and TCP, any resolver address) and never reach the upstream',
  async (t) => {
    const c = await computer({
      mode: 'allowlist',
      rules: [
        { host: 'allowed.test', port: 80, protocol: 'tcp' },
        { host: 'chain.test', protocol: 'tcp' },
      ],
    });
    t.is(enforcer.dnsPolicyOf(c.id)?.dns, 'listed', 'the default of an allowlist with hostname rules');
    const secret = 'c2VjcmV0.exfil.test';
    const before = proxy.stats.unlisted;
    // The configured resolver (192.0.2.53 here), another one, and (host namespace) a loopback one.
    for (const [server, netns] of [
      ['@192.0.2.53', true],
      ['@198.51.100.53', true],
      ['@127.0.0.53', false],
    ] as const) {
      for (const name of [secret, 'exfil.test']) {
        for (const type of ['A', 'TXT']) {
          for (const transport of ['+notcp', '+tcp']) {
            const { out } = await world.run('dig', [server, '+tries=1', '+time=2', transport, name, type], {
              cgroup: c.cgroup,
              netns,
            });
            const what = `${name} ${type} ${transport} ${server}`;
            t.regex(out, /status: NXDOMAIN/, what);
            t.regex(out, /EDE: 15 \(Blocked\)/, what);
            t.regex(out, /ANSWER: 0,/, what);
          }
        }
      }
    }
    t.is(proxy.stats.unlisted - before, 24);
    t.deepEqual(upstreamAsked('exfil.test'), [], 'the upstream never saw them');
    // Listed names resolve (UDP and TCP, A and AAAA) and connect.
    t.deepEqual(await short(c.cgroup, 'allowed.test'), ['203.0.113.31']);
    t.deepEqual(await short(c.cgroup, 'allowed.test', 'AAAA', '+tcp'), ['2001:db8:ff::31']);
    t.deepEqual(
      await world.probeResults({ cgroup: c.cgroup }, 'tcp:203.0.113.31:80', 'tcp:[2001:db8:ff::31]:80'),
      ['ok', 'ok'],
    );
    // A CNAME chain that starts at a listed name: its end is learned, though its names are not listed.
    t.deepEqual(await short(c.cgroup, 'chain.test'), ['hop.exfil.test.', '203.0.113.51']);
    t.deepEqual(await world.probeResults({ cgroup: c.cgroup }, 'tcp:203.0.113.51:443'), ['ok']);
    t.true(upstreamAsked(' chain.test').includes('A chain.test'));
    t.regex(
      (await dig(c.cgroup, ['hop.exfil.test', 'A'])).out,
      /status: NXDOMAIN/,
      'asked alone, it is not listed',
    );
    t.deepEqual(upstreamAsked('exfil.test'), []);
    // Each refusal is a deny event, with the name.
    const events = denied.filter((e) => e.computer === c.id && e.reason === 'dns_unlisted');
    t.true(events.length >= 24);
    t.like(
      // Names as the rules match them: lower case.
      events.find((e) => e.hostname === secret.toLowerCase() && e.protocol === 'tcp'),
      { pid: null, comm: null, address: null, port: 53, family: 'ipv4' },
    );
  },
);

test.serial(
  'dns listed: a covered name is forwarded for A, AAAA, CNAME, HTTPS and SVCB only; other types get an empty answer from the proxy',
  async (t) => {
    const c = await computer({ mode: 'allowlist', rules: [{ host: 'allowed.test', protocol: 'tcp' }] });
    const before = proxy.stats.typeNotForwarded;
    for (const type of ['TXT', 'NULL', 'ANY', 'MX', 'SRV', 'TYPE99']) {
      for (const transport of ['+notcp', '+tcp']) {
        const { out } = await dig(c.cgroup, [transport, 'allowed.test', type]);
        t.regex(out, /status: NOERROR/, `${type} ${transport}`);
        t.regex(out, /ANSWER: 0,/, `${type} ${transport}`);
        t.regex(out, /EDE: 15 \(Blocked\)/, `${type} ${transport}`);
      }
    }
    t.is(proxy.stats.typeNotForwarded - before, 12);
    const asked = () => upstreamAsked(' allowed.test').map((q) => q.split(' ')[0]);
    t.false(
      asked().some((type) => ['TXT', 'NULL', 'ANY', 'MX', 'SRV', 'type=99'].includes(type ?? '')),
      asked().join(', '),
    );
    for (const type of ['HTTPS', 'SVCB', 'CNAME']) await dig(c.cgroup, ['allowed.test', type]);
    t.true(asked().includes('HTTPS') || asked().includes('type=65'), asked().join(', '));
    t.true(asked().includes('SVCB') || asked().includes('type=64'), asked().join(', '));
    t.true(asked().includes('CNAME'), asked().join(', '));
  },
);

test.serial(
  "dns none: the proxy answers every query NXDOMAIN itself and forwards nothing; DNS sends are no longer refused, so glibc's and musl's getaddrinfo give up at once",
  async (t) => {
    const c = await computer({ mode: 'isolated', rules: [], dns: 'none' });
    const asked = dnsmasq.queries().length;
    const before = proxy.stats.refused;
    for (const [server, netns] of [
      ['@192.0.2.53', true],
      ['@198.51.100.53', true],
      ['@127.0.0.53', false],
    ] as const) {
      for (const transport of ['+notcp', '+tcp']) {
        const { out } = await world.run(
          'dig',
          [server, '+tries=1', '+time=2', transport, 'allowed.test', 'A'],
          {
            cgroup: c.cgroup,
            netns,
          },
        );
        t.regex(out, /status: NXDOMAIN/, `${transport} ${server}`);
        t.regex(out, /EDE: 15 \(Blocked\): \(egressd: .*dns none\)/, `${transport} ${server}`);
      }
    }
    t.is(proxy.stats.refused - before, 6);
    // Before dns existed, block_dns made the kernel refuse the send (EPERM); now it goes to the proxy.
    t.deepEqual(
      await world.probeResults({ cgroup: c.cgroup }, 'udp-sendto:192.0.2.53:53', 'tcp:192.0.2.53:53'),
      ['ok', 'ok'],
    );
    for (const libc of ['glibc', 'musl'] as const) {
      const times: number[] = [];
      for (let i = 0; i < 3; i++) {
        const r = await resolve(c.cgroup, libc, 'allowed.test');
        t.is(r.result, 'EAI_NONAME', libc);
        t.true(r.ms < 100 * SCALE, `${libc} getaddrinfo gave up after ${r.ms} ms`);
        times.push(r.ms);
      }
      t.log(`${libc} getaddrinfo, dns none: failed after ${times.join(', ')} ms`);
    }
    t.is(dnsmasq.queries().length, asked, 'the upstream was asked nothing');
    t.like(
      denied.find((e) => e.computer === c.id && e.reason === 'dns_refused' && e.protocol === 'udp'),
      { hostname: 'allowed.test', pid: null, port: 53, family: 'ipv4' },
    );
    // An allowlist of addresses only: none is its default.
    const cidrs = await computer({ mode: 'allowlist', rules: [{ host: '203.0.113.31', protocol: 'tcp' }] });
    t.is(enforcer.dnsPolicyOf(cidrs.id)?.dns, 'none');
    t.regex((await dig(cidrs.cgroup, ['allowed.test', 'A'])).out, /status: NXDOMAIN/);
    t.deepEqual(await world.probeResults({ cgroup: cidrs.cgroup }, 'tcp:203.0.113.31:80'), ['ok']);
    t.is(dnsmasq.queries().length, asked);
  },
);

test.serial(
  'HTTPS answers reach the computer without ech, their other params as they were (dns listed, all, audit)',
  async (t) => {
    const upstream = await world.run(
      'dig',
      ['@127.0.0.1', '-p', String(dnsmasq.port), '+short', 'ech.test', 'HTTPS'],
      { netns: false },
    );
    t.regex(upstream.out, /^1 \. alpn="h2" ipv4hint=203\.0\.113\.34 ech=\S+ ipv6hint=2001:db8:ff::34$/m);
    t.regex(upstream.out, /^2 \. mandatory=alpn,ech alpn="h3" ech=\S+$/m);
    const rules = [{ host: 'ech.test', protocol: 'tcp' as const }];
    for (const policy of [
      { mode: 'allowlist', rules },
      { mode: 'allowlist', rules, dns: 'all' },
      { mode: 'denylist', rules: [], dns: 'none', audit: true },
    ] satisfies Policy[]) {
      const c = await computer(policy);
      for (const transport of ['+notcp', '+tcp']) {
        t.deepEqual(
          await short(c.cgroup, 'ech.test', 'HTTPS', transport),
          ['1 . alpn="h2" ipv4hint=203.0.113.34 ipv6hint=2001:db8:ff::34'],
          `${JSON.stringify(policy)} ${transport}`,
        );
      }
    }
  },
);

test.serial(
  'dns listed: an unlisted name fails at once for glibc and musl; a listed one resolves',
  async (t) => {
    const c = await computer({ mode: 'allowlist', rules: [{ host: 'allowed.test', protocol: 'tcp' }] });
    for (const libc of ['glibc', 'musl'] as const) {
      const unlisted = await resolve(c.cgroup, libc, 'exfil.test');
      t.is(unlisted.result, 'EAI_NONAME', libc);
      t.true(unlisted.ms < 100 * SCALE, `${libc}: ${unlisted.ms} ms`);
      t.log(`${libc} getaddrinfo, dns listed, an unlisted name: failed after ${unlisted.ms} ms`);
      const listed = await resolve(c.cgroup, libc, 'allowed.test');
      t.is(listed.result, 'ok', libc);
      t.deepEqual([...listed.addresses].sort(), ['2001:db8:ff::31', '203.0.113.31'], libc);
    }
    t.deepEqual(upstreamAsked('exfil.test'), []);
  },
);

test.serial(
  "flags the policy does not call for (an earlier agent's block_dns) are rewritten when the computer is attached again",
  async (t) => {
    const c = await computer({ mode: 'isolated', rules: [], dns: 'none' });
    const fd = bpf.objGet(path.join(world.pinDir, 'maps', 'computers'));
    try {
      const key = encodeCgroupKey(enforcer.attachedCgroupId(c.id)!);
      const value = Buffer.alloc(LAYOUT.egress_computer.size);
      t.true(bpf.mapLookup(fd, key, value));
      bpf.mapUpdate(fd, key, encodeComputer({ ...decodeComputer(value), flags: FLAG.blockDns }));
    } finally {
      bpf.closeFd(fd);
    }
    t.is(enforcer.state(c.id)?.flags, FLAG.blockDns);
    // The same version again (an agent restarted over an earlier agent's pins).
    enforcer.attach(c.id, world.cgroupRelative(c.id), { mode: 'isolated', rules: [], dns: 'none' }, 1n, {
      port: proxy.portOf(c.id) ?? 0,
    });
    t.is(enforcer.state(c.id)?.flags, FLAG.observe, 'observed (--observe all), nothing else');
    t.regex((await dig(c.cgroup, ['allowed.test', 'A'])).out, /status: NXDOMAIN/);
  },
);

test.serial("the proxy's refusals are rate-limited per computer like the kernel's deny events", async (t) => {
  const c = await computer({ mode: 'allowlist', rules: [{ host: 'allowed.test', protocol: 'tcp' }] });
  const started = Date.now();
  for (let i = 0; i < 300; i++) {
    const query = dnsPacket.encode({
      type: 'query',
      id: i,
      flags: dnsPacket.RECURSION_DESIRED,
      questions: [{ type: 'A', name: `q${i}.exfil.test` }],
    });
    const reply = await proxy.handle(c.id, query, 'udp');
    if (i % 50 === 0) t.is((dnsPacket.decode(reply!).flags ?? 0) & 0xf, 3, 'NXDOMAIN');
  }
  const seconds = (Date.now() - started) / 1000;
  const mine = denied.filter((e) => e.computer === c.id);
  t.true(mine.length >= 100, `${mine.length} delivered`);
  t.true(mine.length <= 100 + Math.ceil(seconds * 20) + 1, `${mine.length} delivered in ${seconds} s`);
  t.is(events.dropped.get(c.id), 300 - mine.length);
  t.is(events.delivered.get(c.id), mine.length);
  t.deepEqual(upstreamAsked('exfil.test'), []);
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

test.serial(
  'upstreams in order: a dead one is passed over (UDP after its timeout, TCP at once), so is one that answers REFUSED',
  async (t) => {
    // A real resolver that is gone (its port closed), and one that refuses: no names, no resolver of its own.
    const dead = await startDnsmasq([]);
    await dead.stop();
    const refusing = await startDnsmasq([], { logQueries: true });
    t.teardown(() => refusing.stop());
    const fallback = startProxy([dead, refusing, dnsmasq], 3000);
    t.teardown(() => fallback.close());
    const id = `d${++counter}`;
    const cg = world.makeCgroup(id);
    const policy: Policy = {
      mode: 'allowlist',
      rules: [{ host: 'allowed.test', port: 80, protocol: 'tcp' }],
    };
    enforcer.attach(id, cg.relative, policy, 1n, { port: await fallback.ensure(id) });
    t.teardown(() => enforcer.detach(id));

    let started = Date.now();
    t.deepEqual(await short(cg.path, 'allowed.test', 'A', '+time=8'), ['203.0.113.31']);
    t.true(Date.now() - started >= 3000, 'the dead one had its 3 s (UDP: a closed port is silence)');
    t.is(fallback.stats.fallbacks, 2);
    t.deepEqual(refusing.queries(), ['A allowed.test'], 'the second was asked, and refused');
    t.deepEqual(await world.probeResults({ cgroup: cg.path }, 'tcp:203.0.113.31:80'), ['ok'], 'and learned');

    started = Date.now();
    t.deepEqual(await short(cg.path, 'allowed.test', 'AAAA', '+tcp', '+time=8'), ['2001:db8:ff::31']);
    t.true(Date.now() - started < 3000, 'over TCP the dead one refuses the connection: no wait');
    t.is(fallback.stats.fallbacks, 4);
    t.is(fallback.stats.failClosed, 0);
  },
);

test.serial('upstreams in order: NXDOMAIN is final, the next one is not asked', async (t) => {
  // Knows nothing under test. but says so: NXDOMAIN.
  const nx = await startDnsmasq(['local=/test/']);
  t.teardown(() => nx.stop());
  const fallback = startProxy([nx, dnsmasq]);
  t.teardown(() => fallback.close());
  const id = `d${++counter}`;
  const cg = world.makeCgroup(id);
  const policy: Policy = { mode: 'allowlist', rules: [{ host: 'other.test', port: 80, protocol: 'tcp' }] };
  enforcer.attach(id, cg.relative, policy, 1n, { port: await fallback.ensure(id) });
  t.teardown(() => enforcer.detach(id));
  const asked = upstreamAsked(' other.test').length;
  const r = await dig(cg.path, ['other.test', 'A']);
  t.regex(r.out, /status: NXDOMAIN/);
  t.is(upstreamAsked(' other.test').length, asked, 'the second upstream never saw it');
  t.is(fallback.stats.fallbacks, 0);
});

test.serial(
  "a computer with its own upstream (dns_upstream) gets that resolver's answers; another gets the default's",
  async (t) => {
    // The sandbox runtime's resolver: knows allowed.test by another address, and a name of its own.
    const own = await startDnsmasq([
      'host-record=allowed.test,203.0.113.131,300',
      'host-record=internal.test,203.0.113.132,300',
    ]);
    t.teardown(() => own.stop());
    const policy: Policy = {
      mode: 'allowlist',
      rules: [
        { host: 'allowed.test', port: 80, protocol: 'tcp' },
        { host: 'internal.test', port: 80, protocol: 'tcp' },
      ],
      dns: 'listed',
    };
    const plain = await computer(policy);
    const ownId = `d${++counter}`;
    const ownCg = world.makeCgroup(ownId);
    const upstream = { host: own.host, port: own.port };
    const port = await proxy.ensure(ownId, 0, { upstream });
    enforcer.attach(ownId, ownCg.relative, policy, 1n, { port });
    t.deepEqual(proxy.upstreamOf(ownId), upstream);
    t.deepEqual(proxy.upstreamOf(plain.id), { host: dnsmasq.host, port: dnsmasq.port });

    t.deepEqual(await short(ownCg.path, 'allowed.test'), ['203.0.113.131']);
    t.deepEqual(await short(ownCg.path, 'internal.test', 'A', '+tcp'), ['203.0.113.132']);
    t.deepEqual(await short(plain.cgroup, 'allowed.test'), ['203.0.113.31']);
    t.deepEqual(await short(plain.cgroup, 'internal.test'), [], 'the default upstream does not know it');
    // What is learned is what each one's resolver answered.
    t.deepEqual(
      await world.probeResults({ cgroup: ownCg.path }, 'tcp:203.0.113.131:80', 'tcp:203.0.113.31:80'),
      ['ok', 'EPERM'],
    );
    t.deepEqual(
      await world.probeResults({ cgroup: plain.cgroup }, 'tcp:203.0.113.31:80', 'tcp:203.0.113.131:80'),
      ['ok', 'EPERM'],
    );

    // Taking the upstream away (ensure again without one): the default answers, on the same port.
    t.is(await proxy.ensure(ownId, 0), port);
    t.deepEqual(await short(ownCg.path, 'allowed.test'), ['203.0.113.31']);
    // And back.
    t.is(await proxy.ensure(ownId, 0, { upstream }), port);
    t.deepEqual(await short(ownCg.path, 'allowed.test', 'A', '+tcp'), ['203.0.113.131']);
    proxy.release(ownId);
    enforcer.detach(ownId);
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
    t.deepEqual(await short(c.cgroup, 'allowed.test', 'AAAA'), ['2001:db8:ff::31']);
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
