/**
 * The DNS proxy's decisions by the policy's `dns`, without a kernel: a fake
 * enforcer (the policy's mode, dns and listed names) and a UDP upstream on
 * loopback that records every message it receives, byte for byte, and
 * answers each with one A record. Queries go in through DnsProxy.handle().
 */
import dgram from 'node:dgram';
import test from 'ava';
import dnsPacket from 'dns-packet';
import { pino } from 'pino';
import { DnsProxy } from '../../daemon/dns/proxy.js';
import type { UserDenial } from '../../daemon/events.js';
import { nameMatches } from '../../daemon/kernel/compile.js';
import type { Enforcer } from '../../daemon/kernel/enforcer.js';
import type { DnsMode, Mode } from '../../policy/types.js';

interface Setup {
  proxy: DnsProxy;
  /** What reached the upstream, decoded. */
  received: dnsPacket.DecodedPacket[];
  raw: Buffer[];
  denied: UserDenial[];
  close(): Promise<void>;
}

async function setup(
  mode: Mode | undefined,
  dns: DnsMode | undefined,
  patterns: string[],
  audit = false,
): Promise<Setup> {
  const upstream = dgram.createSocket('udp4');
  const received: dnsPacket.DecodedPacket[] = [];
  const raw: Buffer[] = [];
  upstream.on('message', (msg, rinfo) => {
    raw.push(msg);
    const q = dnsPacket.decode(msg);
    received.push(q);
    const question = q.questions?.[0];
    upstream.send(
      dnsPacket.encode({
        type: 'response',
        id: q.id ?? 0,
        flags: dnsPacket.RECURSION_AVAILABLE,
        questions: q.questions ?? [],
        answers: question ? [{ type: 'A', name: question.name, ttl: 60, data: '203.0.113.9' }] : [],
      }),
      rinfo.port,
      rinfo.address,
    );
  });
  await new Promise<void>((r) => upstream.bind(0, '127.0.0.1', r));
  const listed = (names: string[]) => names.some((n) => patterns.some((p) => nameMatches(p, n)));
  const enforcer = {
    dnsPolicyOf: () => (mode === undefined || dns === undefined ? undefined : { mode, dns, audit }),
    listsName: (_id: string, names: string[]) => listed(names),
    learn: (_id: string, names: string[]) => (listed(names) ? { lifetimeS: 60, written: [] } : undefined),
  } as unknown as Enforcer;
  const denied: UserDenial[] = [];
  const proxy = new DnsProxy({
    enforcer,
    upstreams: [{ host: '127.0.0.1', port: upstream.address().port }],
    listen: [],
    portRange: [0, 0],
    ttlFloor: 1,
    ttlCeiling: 3600,
    timeoutMs: 1000,
    log: pino({ level: 'silent' }),
    onDenied: (d) => denied.push(d),
  });
  return {
    proxy,
    received,
    raw,
    denied,
    close: async () => {
      await proxy.close();
      upstream.close();
    },
  };
}

function query(name: string, type = 'A', more: Partial<dnsPacket.Packet> = {}): Buffer {
  return dnsPacket.encode({
    type: 'query',
    id: 4242,
    flags: dnsPacket.RECURSION_DESIRED,
    questions: [{ type, name } as dnsPacket.Question],
    ...more,
  });
}

const rcode = (reply: Buffer | undefined) => (reply ? (dnsPacket.decode(reply).flags ?? 0) & 0xf : -1);

/** The Extended DNS Error of a reply: [info code, text], or undefined. */
function ede(reply: Buffer): [number, string] | undefined {
  const opt = (dnsPacket.decode(reply).additionals ?? []).find((a) => a.type === 'OPT') as
    | { options?: { code: number; data: Buffer }[] }
    | undefined;
  const option = opt?.options?.find((o) => o.code === 15);
  return option ? [option.data.readUInt16BE(0), option.data.subarray(2).toString()] : undefined;
}

const EDNS = {
  additionals: [{ type: 'OPT', name: '.', udpPayloadSize: 1232, flags: 0 } as unknown as dnsPacket.Answer],
};

test('listed: a covered name is forwarded, an uncovered one answered NXDOMAIN at once and never forwarded', async (t) => {
  const s = await setup('allowlist', 'listed', ['allowed.test', '*.wild.test']);
  t.teardown(() => s.close());
  for (const name of ['allowed.test', 'Allowed.Test.', 'a.wild.test', 'x.y.wild.test']) {
    const reply = await s.proxy.handle('c1', query(name), 'udp');
    t.is(rcode(reply), 0, name);
    t.is(dnsPacket.decode(reply!).answers?.length, 1, name);
  }
  for (const name of ['wild.test', 'secret.allowed.test', 'evil.example', 'allowed.test.evil.example']) {
    const reply = await s.proxy.handle('c1', query(name, 'A', EDNS), 'tcp', 'ipv6');
    t.is(rcode(reply), 3, name);
    t.is(dnsPacket.decode(reply!).id, 4242);
    t.deepEqual(ede(reply!)?.[0], 15, 'Extended DNS Error "Blocked"');
    t.regex(ede(reply!)?.[1] ?? '', /dns listed/);
  }
  t.is(s.received.length, 4, 'only the covered names reached the upstream');
  t.deepEqual(
    s.denied.map((d) => [d.reason, d.hostname, d.protocol, d.family]),
    [
      ['dns_unlisted', 'wild.test', 'tcp', 'ipv6'],
      ['dns_unlisted', 'secret.allowed.test', 'tcp', 'ipv6'],
      ['dns_unlisted', 'evil.example', 'tcp', 'ipv6'],
      ['dns_unlisted', 'allowed.test.evil.example', 'tcp', 'ipv6'],
    ],
  );
  t.is(s.proxy.stats.unlisted, 4);
  // Without EDNS in the query, no OPT in the answer (RFC 6891).
  const plain = await s.proxy.handle('c1', query('evil.example'), 'udp');
  t.is(ede(plain!), undefined);
  t.is(dnsPacket.decode(plain!).additionals?.length ?? 0, 0);
});

test('listed: other types of a covered name, and other opcodes, are answered by the proxy', async (t) => {
  const s = await setup('allowlist', 'listed', ['allowed.test']);
  t.teardown(() => s.close());
  // This dns-packet spells SVCB (64) and HTTPS (65) as UNKNOWN_64 and UNKNOWN_65.
  for (const type of ['A', 'AAAA', 'CNAME', 'UNKNOWN_64', 'UNKNOWN_65']) {
    t.is(rcode(await s.proxy.handle('c1', query('allowed.test', type), 'udp')), 0, type);
  }
  const forwarded = s.received.length;
  t.deepEqual(
    s.received.map((q) => q.questions?.[0]?.type),
    ['A', 'AAAA', 'CNAME', 'UNKNOWN_64', 'UNKNOWN_65'],
    'forwarded',
  );
  for (const type of ['TXT', 'NULL', 'ANY', 'MX', 'SRV', 'PTR', 'UNKNOWN_99']) {
    const reply = await s.proxy.handle('c1', query('allowed.test', type, EDNS), 'udp');
    t.is(rcode(reply), 0, `${type}: NOERROR`);
    t.is(dnsPacket.decode(reply!).answers?.length, 0, `${type}: no records`);
    t.is(ede(reply!)?.[0], 15, type);
  }
  const chaos = query('allowed.test', 'A');
  chaos.writeUInt16BE(3, chaos.length - 2); // class CH
  t.is(rcode(await s.proxy.handle('c1', chaos, 'udp')), 0);
  const notify = query('allowed.test', 'A');
  notify.writeUInt16BE(0x2000, 2); // opcode NOTIFY (4)
  t.is(rcode(await s.proxy.handle('c1', notify, 'udp')), 4, 'NOTIMP');
  t.is(s.received.length, forwarded, 'none of them forwarded');
  t.is(s.proxy.stats.typeNotForwarded, 9);
  t.deepEqual(s.denied, [], 'not deny events: the name is listed');
});

test('listed: what goes upstream is rebuilt from the question judged, nothing else of the message', async (t) => {
  const s = await setup('allowlist', 'listed', ['allowed.test']);
  t.teardown(() => s.close());
  // A query with an answer, an authority and an additional record, an EDNS option and every header flag.
  const stuffed = dnsPacket.encode({
    type: 'query',
    id: 1,
    flags: dnsPacket.RECURSION_DESIRED | dnsPacket.CHECKING_DISABLED | dnsPacket.AUTHENTIC_DATA | (1 << 6),
    questions: [{ type: 'A', name: 'AlLoWeD.test' }],
    answers: [{ type: 'TXT', name: 'x.evil.example', data: 'secret one' }],
    authorities: [{ type: 'TXT', name: 'y.evil.example', data: 'secret two' }],
    additionals: [
      { type: 'TXT', name: 'z.evil.example', data: 'secret three' },
      {
        type: 'OPT',
        name: '.',
        udpPayloadSize: 4096,
        flags: dnsPacket.DNSSEC_OK,
        options: [{ code: 65001, data: Buffer.from('secret four') }],
      } as unknown as dnsPacket.Answer,
    ],
  });
  t.is(rcode(await s.proxy.handle('c1', stuffed, 'udp')), 0);
  t.is(s.raw.length, 1);
  t.false(s.raw[0]!.includes('secret'), 'no record or option of the client went upstream');
  t.false(s.raw[0]!.includes('evil'));
  const sent = s.received[0]!;
  t.deepEqual(sent.questions, [{ name: 'AlLoWeD.test', type: 'A', class: 'IN' }]);
  t.is(sent.answers?.length, 0);
  t.is(sent.authorities?.length, 0);
  t.is(sent.flags, dnsPacket.RECURSION_DESIRED | dnsPacket.CHECKING_DISABLED, 'RD and CD only');
  const opt = sent.additionals?.find((a) => a.type === 'OPT') as
    | { udpPayloadSize: number; flags: number; options: unknown[] }
    | undefined;
  t.like(opt, { udpPayloadSize: 4096, flags: dnsPacket.DNSSEC_OK, options: [] });
  // One label with a dot in it decodes as "allowed.test": it goes out as the two labels judged.
  const dotted = Buffer.concat([
    Buffer.from([0, 9, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]),
    Buffer.from([12, ...Buffer.from('allowed.test'), 0, 0, 1, 0, 1]),
  ]);
  t.is(rcode(await s.proxy.handle('c1', dotted, 'udp')), 0);
  t.true(s.raw[1]!.includes(Buffer.from([7, ...Buffer.from('allowed'), 4, ...Buffer.from('test'), 0])));
});

test('none: every query answered NXDOMAIN by the proxy; all: everything forwarded as it came', async (t) => {
  const none = await setup('isolated', 'none', []);
  t.teardown(() => none.close());
  for (const type of ['A', 'AAAA', 'TXT']) {
    const reply = await none.proxy.handle('c1', query('allowed.test', type, EDNS), 'udp');
    t.is(rcode(reply), 3, type);
    t.regex(ede(reply!)?.[1] ?? '', /dns none/);
  }
  t.is(none.received.length, 0);
  t.deepEqual(
    none.denied.map((d) => d.reason),
    ['dns_refused', 'dns_refused', 'dns_refused'],
  );
  t.is(none.proxy.stats.refused, 3);
  const all = await setup('allowlist', 'all', ['allowed.test']);
  t.teardown(() => all.close());
  const txt = query('evil.example', 'TXT', EDNS);
  t.is(rcode(await all.proxy.handle('c1', txt, 'udp')), 0);
  t.is(all.raw[0]!.subarray(2).compare(txt.subarray(2)), 0, 'the message as it came (but its id)');
  t.deepEqual(all.denied, []);
});

test('a computer this process does not know (yet): SERVFAIL, nothing forwarded', async (t) => {
  const s = await setup(undefined, undefined, []);
  t.teardown(() => s.close());
  t.is(rcode(await s.proxy.handle('c1', query('allowed.test'), 'udp')), 2);
  t.is(s.received.length, 0);
  t.is(s.proxy.stats.failClosed, 1);
});

test('audit: what listed or none would answer NXDOMAIN is forwarded and answered as upstream did, each with an audit event', async (t) => {
  const listed = await setup('allowlist', 'listed', ['allowed.test'], true);
  t.teardown(() => listed.close());
  for (const [name, type] of [
    ['evil.example', 'A'],
    ['allowed.test', 'TXT'],
  ] as const) {
    const reply = await listed.proxy.handle('c1', query(name, type), 'udp');
    t.is(rcode(reply), 0, `${name} ${type}: upstream's answer`);
  }
  t.is(listed.received.length, 2, 'both reached the upstream');
  t.deepEqual(
    listed.denied.map((d) => [d.reason, d.hostname, d.audit]),
    [['dns_unlisted', 'evil.example', true]],
    'the unlisted name is reported, marked audit; a covered name asked another type is not a refusal',
  );
  const none = await setup('allowlist', 'none', [], true);
  t.teardown(() => none.close());
  t.is(rcode(await none.proxy.handle('c1', query('anything.example'), 'udp')), 0);
  t.is(none.received.length, 1);
  t.deepEqual(
    none.denied.map((d) => [d.reason, d.audit]),
    [['dns_refused', true]],
  );
});
