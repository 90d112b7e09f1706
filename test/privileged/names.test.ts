/**
 * Name-bound connections (bpf/lib/names.h): a connection that a computer may
 * make only because a hostname rule's learned address matched must start
 * with a TLS ClientHello or an HTTP/1.x request that names a server the
 * address was learned for; other first bytes pass; QUIC to such an address
 * is refused. The world's echo server sends back whatever reaches it, so
 * "echoed" proves bytes got through and "nothing echoed" that they did not.
 * Real programs, real sockets in a computer's cgroup.
 */
import test, { type ExecutionContext } from 'ava';
import type { DnsProxy } from '../../daemon/dns/proxy.js';
import { DenyEvents, type DenyRecord } from '../../daemon/events.js';
import { Enforcer } from '../../daemon/kernel/enforcer.js';
import type { Policy, Rule } from '../../policy/types.js';
import { clientHello } from '../helpers/client-hello.js';
import { testDnsProxy } from '../helpers/dns-proxy.js';
import { type Dnsmasq, startDnsmasq } from '../helpers/dnsmasq.js';
import { ECHO_PORT, echoServer } from '../helpers/held-sockets.js';
import { createWorld, REPO_ROOT, SCALE, type World } from '../helpers/world.js';

const CLIENT = `${REPO_ROOT}dist/test/helpers/first-bytes.js`;
/** Served "for" many names, as on a CDN: every test teaches it for some of them. */
const SHARED = '203.0.113.50';
const SHARED_BYTES = [203, 0, 113, 50];

let world: World;
let enforcer: Enforcer;
let events: DenyEvents;
let dnsmasq: Dnsmasq;
let proxy: DnsProxy;
const seen: DenyRecord[] = [];
let computers = 0;

test.before(async () => {
  world = await createWorld({ gateway: true });
  dnsmasq = await startDnsmasq([
    `host-record=proxied.test,${SHARED},300`,
    `host-record=cohost.test,${SHARED},300`,
  ]);
  enforcer = Enforcer.open({ pinDir: world.pinDir, cgroupRoot: world.cgroupMount });
  enforcer.setDnsConfig([46000, 46999], world.gateway!.host4, world.gateway!.host6);
  proxy = testDnsProxy(world, enforcer, dnsmasq, [46000, 46999]);
  events = new DenyEvents({ enforcer, ratePerSecond: 1000, burst: 1000, sink: (r) => seen.push(r) });
  await echoServer(world, true);
});

test.after.always(async () => {
  events?.close();
  await proxy?.close();
  enforcer?.close();
  await dnsmasq?.stop();
  await world?.destroy();
});

/** A computer under an allowlist of `rules` that has learned SHARED for `names` (as its DNS answers would teach). */
function computer(rules: Rule[], names: string[][], extra: Partial<Policy> = {}): string {
  const id = `names-${++computers}`;
  const cg = world.makeCgroup(id);
  enforcer.attach(id, cg.relative, { mode: 'allowlist', rules, ...extra }, 1n);
  for (const chain of names) enforcer.learn(id, chain, [SHARED_BYTES], 300);
  return id;
}

const tcpRule = (host: string, extra: Partial<Rule> = {}): Rule => ({
  host,
  port: ECHO_PORT,
  protocol: 'tcp',
  ...extra,
});

interface TcpResult {
  connect: string;
  writes?: string[];
  echoed?: number;
  sent?: number;
}

/** Connects from the computer to SHARED and writes each chunk as its own send(). */
function send(id: string, ...chunks: (Buffer | string)[]): Promise<TcpResult> {
  return sendTo(id, SHARED, ...chunks);
}

async function sendTo(id: string, host: string, ...chunks: (Buffer | string)[]): Promise<TcpResult> {
  const hex = chunks.map((c) => Buffer.from(c).toString('hex'));
  const { code, out } = await world.run('node', [CLIENT, 'tcp', host, String(ECHO_PORT), ...hex], {
    cgroup: id,
  });
  if (code !== 0) throw new Error(`first-bytes exited ${code}: ${out}`);
  return JSON.parse(out) as TcpResult;
}

/** The echo came back whole: the bytes reached the server. */
function passed(t: ExecutionContext, r: TcpResult, what: string): void {
  t.is(r.connect, 'ok', `${what}: connects`);
  t.true(
    (r.writes ?? []).every((w) => w === 'ok'),
    `${what}: every send succeeds (${r.writes})`,
  );
  t.true((r.sent ?? 0) > 0 && r.echoed === r.sent, `${what}: echoed ${r.echoed} of ${r.sent}`);
}

/** Refused: the connect succeeds, a send fails with EACCES, and nothing reached the server. */
function refused(t: ExecutionContext, r: TcpResult, what: string): void {
  t.is(r.connect, 'ok', `${what}: connects (the address is allowed)`);
  t.is(r.writes?.at(-1), 'EACCES', `${what}: the send is refused (${r.writes})`);
  t.is(r.echoed, 0, `${what}: nothing reached the server`);
}

function take(id: string): DenyRecord[] {
  events.poll();
  const mine = seen.filter((r) => r.computer === id);
  for (const r of mine) seen.splice(seen.indexOf(r), 1);
  return mine;
}

const http = (host: string, target = '/') => `GET ${target} HTTP/1.1\r\nHost: ${host}\r\nAccept: */*\r\n\r\n`;

test.serial(
  'TLS: a ClientHello for the learned name goes through; another name, none, or a split one does not',
  async (t) => {
    const id = computer([tcpRule('allowed.example')], [['allowed.example']]);
    passed(t, await send(id, clientHello({ names: ['allowed.example'] })), 'SNI allowed.example');
    passed(t, await send(id, clientHello({ names: ['ALLOWED.example.'] })), 'SNI in capitals, trailing dot');
    passed(
      t,
      await send(id, clientHello({ names: ['allowed.example'], ech: true })),
      'with a GREASE ECH extension',
    );
    refused(t, await send(id, clientHello({ names: ['other.example'] })), 'SNI other.example');
    refused(t, await send(id, clientHello({})), 'no server_name');
    refused(t, await send(id, clientHello({ names: ['allowed.example', 'other.example'] })), 'two names');
    const ccs = Buffer.from([0x14, 3, 3, 0, 1, 1]);
    refused(
      t,
      await send(id, Buffer.concat([ccs, clientHello({ names: ['other.example'] })])),
      'another record first',
    );
    const hello = clientHello({ names: ['other.example'] });
    refused(
      t,
      await send(id, hello.subarray(0, 3), hello.subarray(3, 40), hello.subarray(40)),
      'split over three sends',
    );
    const good = clientHello({ names: ['allowed.example'] });
    passed(t, await send(id, good.subarray(0, 3), good.subarray(3)), 'the allowed one split over two sends');
    passed(
      t,
      await send(id, clientHello({ names: ['allowed.example'], keyShareBytes: 8000 })),
      'a ClientHello of 8 kB (several segments, one send)',
    );
    const events = take(id);
    t.deepEqual(
      events.map((e) => [e.reason, e.name, e.address, e.port]),
      [
        ['name_mismatch', 'other.example', SHARED, ECHO_PORT],
        ['name_mismatch', '', SHARED, ECHO_PORT],
        ['name_mismatch', '', SHARED, ECHO_PORT],
        ['name_mismatch', '', SHARED, ECHO_PORT],
        ['name_mismatch', 'other.example', SHARED, ECHO_PORT],
      ],
      'one deny event per refusal, with the name it tried',
    );
  },
);

test.serial('HTTP/1.x: the Host (and an absolute target) must be a learned name', async (t) => {
  const id = computer([tcpRule('allowed.example')], [['allowed.example']]);
  passed(t, await send(id, http('allowed.example')), 'Host: allowed.example');
  passed(t, await send(id, http(`allowed.example:${ECHO_PORT}`)), 'Host with a port');
  refused(t, await send(id, http('other.example')), 'Host: other.example');
  refused(
    t,
    await send(id, http('allowed.example', 'http://other.example/x')),
    'absolute target names another',
  );
  refused(
    t,
    await send(id, http('allowed.example', 'http://allowed.example@other.example/')),
    'userinfo trick',
  );
  refused(t, await send(id, `\r\n${http('other.example')}`), 'after a blank line');
  refused(t, await send(id, 'GET / HT', `TP/1.1\r\nHost: other.example\r\n\r\n`), 'split over two sends');
  refused(
    t,
    await send(id, 'GET / HTTP/1.1\r\nHost: allowed.example\r\nHost: other.example\r\n\r\n'),
    'two Host headers',
  );
  refused(t, await send(id, 'GET / HTTP/1.0\r\n\r\n'), 'no Host');
  refused(t, await send(id, 'GET\t/ HTTP/1.1\r\nHost: other.example\r\n\r\n'), 'a tab after the method');
  refused(
    t,
    await send(id, `CONNECT other.example:443 HTTP/1.1\r\nHost: allowed.example\r\n\r\n`),
    'CONNECT',
  );
  t.deepEqual(
    take(id).map((e) => e.name),
    [...Array(5).fill('other.example'), '', '', 'other.example', 'other.example'],
    'the name each refusal tried ("" where the head was refused before a name: two Hosts, none)',
  );
});

test.serial(
  'other protocols pass (an SSH banner exchange); QUIC-shaped UDP to 443 is refused unless a rule says udp',
  async (t) => {
    const id = computer(
      [tcpRule('git.example'), { host: 'git.example', port: 443, protocol: 'any' }],
      [['git.example']],
    );
    passed(t, await send(id, 'SSH-2.0-OpenSSH_9.2p1\r\n', Buffer.from([0, 0, 1, 0x2c, 10, 20])), 'SSH');
    passed(t, await send(id, Buffer.from([0x00, 0x01, 0x02])), 'binary');
    const quic = Buffer.concat([Buffer.from([0xc0, 0, 0, 0, 1]), Buffer.alloc(1195)]).toString('hex');
    const udp = await world.run('node', [CLIENT, 'udp', SHARED, '443', quic], { cgroup: id });
    t.deepEqual(JSON.parse(udp.out), { send: 'EPERM' }, 'QUIC refused');
    t.deepEqual(
      take(id).map((e) => [e.reason, e.protocol, e.port]),
      [['quic', 'udp', 443]],
    );
    const withUdp = computer([{ host: 'git.example', port: 443, protocol: 'udp' }], [['git.example']]);
    const allowed = await world.run('node', [CLIENT, 'udp', SHARED, '443', quic], { cgroup: withUdp });
    t.deepEqual(JSON.parse(allowed.out), { send: 'ok' }, 'a rule that says udp allows it');
  },
);

test.serial('two names on one address: each listed name works; an unlisted one does not', async (t) => {
  const both = computer([tcpRule('one.example'), tcpRule('two.example')], [['one.example'], ['two.example']]);
  passed(t, await send(both, clientHello({ names: ['one.example'] })), 'one');
  passed(t, await send(both, clientHello({ names: ['two.example'] })), 'two');
  const onlyOne = computer([tcpRule('one.example')], [['one.example'], ['two.example']]);
  passed(t, await send(onlyOne, clientHello({ names: ['one.example'] })), 'one, listed');
  refused(t, await send(onlyOne, clientHello({ names: ['two.example'] })), 'two, not listed');
});

test.serial(
  'wildcards and CNAME chains: a name under the wildcard passes; the chain question passes',
  async (t) => {
    const id = computer(
      [tcpRule('*.cdn.example')],
      [['a.cdn.example'], ['www.shop.example', 'shop.cdn.example']],
    );
    passed(t, await send(id, clientHello({ names: ['b.cdn.example'] })), 'another name under *.cdn.example');
    passed(t, await send(id, clientHello({ names: ['deep.b.cdn.example'] })), 'deeper under it');
    passed(t, await send(id, clientHello({ names: ['www.shop.example'] })), 'the question of a CNAME chain');
    refused(t, await send(id, clientHello({ names: ['cdn.example'] })), 'the wildcard is strictly below');
    refused(t, await send(id, clientHello({ names: ['b.cdn.example.evil.example'] })), 'a suffix trick');
  },
);

test.serial(
  'no check where a CIDR rule or bind_name false covers the address; audit lets it through with an event',
  async (t) => {
    const cidr = computer([tcpRule('allowed.example'), tcpRule('203.0.113.0/24')], [['allowed.example']]);
    passed(t, await send(cidr, clientHello({ names: ['other.example'] })), 'a CIDR rule covers it');
    const unbound = computer([tcpRule('allowed.example', { bind_name: false })], [['allowed.example']]);
    passed(t, await send(unbound, clientHello({ names: ['other.example'] })), 'bind_name false');
    const audited = computer([tcpRule('allowed.example')], [['allowed.example']], { audit: true });
    passed(t, await send(audited, clientHello({ names: ['other.example'] })), 'audit');
    t.deepEqual(
      take(audited).map((e) => [e.reason, e.name, e.audit]),
      [['name_mismatch', 'other.example', true]],
    );
    t.deepEqual([...take(cidr), ...take(unbound)], []);
  },
);

test.serial(
  'a policy change between connect and first send: judged under the policy in force then',
  async (t) => {
    const id = computer([tcpRule('allowed.example')], [['allowed.example']]);
    // The client connects, then waits: its first send comes after the new policy (a fresh learned id).
    const hello = clientHello({ names: ['allowed.example'] }).toString('hex');
    const child = world.spawn(
      'env',
      ['FIRST_BYTES_WAIT=1', 'node', CLIENT, 'tcp', SHARED, String(ECHO_PORT), hello],
      {
        cgroup: id,
        stdio: ['pipe', 'pipe', 'pipe'],
      },
    );
    const lines: string[] = [];
    let buffered = '';
    child.stdout?.on('data', (d) => {
      buffered += d;
      const parts = buffered.split('\n');
      buffered = parts.pop() ?? '';
      lines.push(...parts);
    });
    const deadline = Date.now() + 10_000 * SCALE;
    while (lines.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    t.deepEqual(JSON.parse(lines[0] ?? '{}'), { connected: true });
    enforcer.apply(id, { mode: 'allowlist', rules: [tcpRule('allowed.example'), tcpRule('x.example')] }, 2n);
    child.stdin?.write('go\n');
    await new Promise((r) => child.once('close', r));
    const out = lines[1] ?? buffered;
    passed(t, JSON.parse(out) as TcpResult, 'still named under the new policy');
  },
);

test.serial(
  'a real TLS client (openssl s_client): its ClientHello names the server it asks for',
  async (t) => {
    const id = computer([tcpRule('allowed.example')], [['allowed.example']]);
    const run = (name: string) =>
      world.run(
        'sh',
        ['-c', `openssl s_client -connect ${SHARED}:${ECHO_PORT} -servername ${name} </dev/null`],
        {
          cgroup: id,
        },
      );
    const bad = await run('other.example');
    t.regex(bad.out, /errno=13|Permission denied/, 'the refused ClientHello: EACCES on the write');
    const good = await run('allowed.example');
    t.notRegex(good.out, /errno=13|Permission denied/, 'the allowed one reaches the echo server');
  },
);

test.serial(
  "TCP Fast Open (bytes in the SYN, sent again from the socket's queue) cannot carry unjudged bytes",
  async (t) => {
    const was = (await world.run('sysctl', ['-n', 'net.ipv4.tcp_fastopen'])).out.trim();
    // Client on, no cookie needed: what a root process in its own namespace may set.
    await world.run('sysctl', ['-w', 'net.ipv4.tcp_fastopen=5']);
    try {
      const hello = clientHello({ names: ['other.example'] }).toString('hex');
      const tfo = async (id: string) => {
        const { out } = await world.run(`${REPO_ROOT}build/tfo-send`, [SHARED, String(ECHO_PORT), hello], {
          cgroup: id,
        });
        return JSON.parse(out) as { send: string; echoed: number };
      };
      const unbound = computer([tcpRule('allowed.example', { bind_name: false })], [['allowed.example']]);
      t.deepEqual(
        await tfo(unbound),
        { send: 'ok', echoed: hello.length / 2 },
        'unchecked: Fast Open delivers',
      );
      const bound = computer([tcpRule('allowed.example')], [['allowed.example']]);
      t.deepEqual(await tfo(bound), { send: 'ok', echoed: 0 }, 'checked: nothing reaches the server');
    } finally {
      await world.run('sysctl', ['-w', `net.ipv4.tcp_fastopen=${was || '1'}`]);
    }
  },
);

test.serial('IPv6 and IPv4-mapped destinations are judged alike', async (t) => {
  const id = computer([tcpRule('allowed.example')], [['allowed.example']]);
  enforcer.learn(
    id,
    ['allowed.example'],
    [[0x20, 0x01, 0x0d, 0xb8, 0, 0xff, ...Array(9).fill(0), 0x50]],
    300,
  );
  const v6 = '2001:db8:ff::50';
  passed(t, await sendTo(id, v6, clientHello({ names: ['allowed.example'] })), 'IPv6, allowed name');
  refused(t, await sendTo(id, v6, clientHello({ names: ['other.example'] })), 'IPv6, other name');
  const mapped = `::ffff:${SHARED}`;
  passed(t, await sendTo(id, mapped, clientHello({ names: ['allowed.example'] })), 'v4-mapped, allowed name');
  refused(t, await sendTo(id, mapped, clientHello({ names: ['other.example'] })), 'v4-mapped, other name');
});

test.serial(
  'learned through the DNS proxy: the name the computer asked is bound; a cohost on the address is refused',
  async (t) => {
    const id = 'names-proxied';
    const cg = world.makeCgroup(id);
    enforcer.attach(id, cg.relative, { mode: 'allowlist', rules: [tcpRule('proxied.test')] }, 1n, {
      port: await proxy.ensure(id),
    });
    const dig = await world.run(
      'dig',
      ['@192.0.2.53', '+short', '+tries=1', '+time=2', 'proxied.test', 'A'],
      {
        cgroup: id,
      },
    );
    t.is(dig.out.trim(), SHARED, 'resolved through the proxy');
    passed(t, await send(id, clientHello({ names: ['proxied.test'] })), 'the name it asked');
    refused(t, await send(id, clientHello({ names: ['cohost.test'] })), 'another name served there');
    t.like(take(id).at(-1), { reason: 'name_mismatch', name: 'cohost.test', hostname: 'proxied.test' });
  },
);
