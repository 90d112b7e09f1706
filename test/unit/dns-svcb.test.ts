/**
 * stripEch: HTTPS and SVCB records reach the computer without their ech
 * param, every other byte as it was, compression pointers following the
 * names they point to. Messages are written out byte by byte.
 */
import test from 'ava';
import dnsPacket from 'dns-packet';
import { stripEch } from '../../daemon/dns/svcb.js';

const HTTPS = 65;
const SVCB = 64;
const A = 1;
const NS = 2;

/** A name as labels, uncompressed. */
function name(dotted: string): Buffer {
  const labels = dotted.split('.').filter((l) => l !== '');
  return Buffer.concat([...labels.map((l) => Buffer.from([l.length, ...Buffer.from(l)])), Buffer.from([0])]);
}

const pointer = (offset: number) => Buffer.from([0xc0 | (offset >> 8), offset & 0xff]);
const u16 = (n: number) => Buffer.from([n >> 8, n & 0xff]);

function param(key: number, value: number[]): Buffer {
  return Buffer.concat([u16(key), u16(value.length), Buffer.from(value)]);
}

/** SVCB/HTTPS RDATA: priority, target, params as given. */
function svcb(priority: number, target: string, ...params: Buffer[]): Buffer {
  return Buffer.concat([u16(priority), name(target), ...params]);
}

function rr(owner: Buffer, type: number, rdata: Buffer): Buffer {
  return Buffer.concat([owner, u16(type), u16(1), Buffer.from([0, 0, 1, 44]), u16(rdata.length), rdata]);
}

/** A response to "www.example.test, type `qtype`" (its name at offset 12) with sections of records. */
function message(qtype: number, sections: Buffer[][], flags = 0x8180): Buffer {
  const header = Buffer.concat([u16(0x1234), u16(flags), u16(1), ...sections.map((s) => u16(s.length))]);
  return Buffer.concat([header, name('www.example.test'), u16(qtype), u16(1), ...sections.flat()]);
}

const QNAME = pointer(12);
const ALPN = param(1, [2, 0x68, 0x32]); // "h2"
const ECH = param(5, [0, 4, 0xfe, 0x0d, 0, 0]); // an ECHConfigList's bytes, any will do
const IPV4HINT = param(4, [192, 0, 2, 1]);
const IPV6HINT = param(6, [0x20, 0x01, 0x0d, 0xb8, ...Array<number>(12).fill(0)]);

test('an HTTPS record loses its ech param and keeps the others; RDLENGTH follows', (t) => {
  const msg = message(HTTPS, [[rr(QNAME, HTTPS, svcb(1, '.', ALPN, IPV4HINT, ECH, IPV6HINT))], [], []]);
  const expected = message(HTTPS, [[rr(QNAME, HTTPS, svcb(1, '.', ALPN, IPV4HINT, IPV6HINT))], [], []]);
  t.deepEqual(stripEch(msg), expected);
  const [answer] = dnsPacket.decode(stripEch(msg)!).answers ?? [];
  t.deepEqual((answer as { data: Buffer }).data, svcb(1, '.', ALPN, IPV4HINT, IPV6HINT));
});

test('SVCB records too, in every section; the ech param last or alone', (t) => {
  const target = 'svc.example.test';
  const msg = message(SVCB, [
    [rr(QNAME, SVCB, svcb(1, target, ALPN, ECH))],
    [rr(QNAME, SVCB, svcb(2, target, ECH))],
    [rr(QNAME, HTTPS, svcb(3, target, IPV4HINT, ECH))],
  ]);
  const expected = message(SVCB, [
    [rr(QNAME, SVCB, svcb(1, target, ALPN))],
    [rr(QNAME, SVCB, svcb(2, target))],
    [rr(QNAME, HTTPS, svcb(3, target, IPV4HINT))],
  ]);
  t.deepEqual(stripEch(msg), expected);
});

test('a record whose mandatory lists ech is dropped, and the section count follows', (t) => {
  const kept = rr(QNAME, HTTPS, svcb(2, '.', ALPN, IPV4HINT));
  const msg = message(HTTPS, [
    [rr(QNAME, HTTPS, svcb(1, '.', param(0, [0, 1, 0, 5]), ALPN, ECH)), kept],
    [],
    [],
  ]);
  t.deepEqual(stripEch(msg), message(HTTPS, [[kept], [], []]));
});

test('alias form (priority 0) stays as it is, ech or not', (t) => {
  const msg = message(HTTPS, [[rr(QNAME, HTTPS, svcb(0, 'cdn.example.test', ECH))], [], []]);
  t.deepEqual(stripEch(msg), msg);
});

test('malformed RDATA is dropped, not passed through with ech', (t) => {
  const truncatedParam = svcb(1, '.', ALPN, ECH).subarray(0, -3);
  const outOfOrder = svcb(1, '.', ECH, ALPN);
  const compressedTarget = Buffer.concat([u16(1), pointer(12), ECH]);
  const oddMandatory = svcb(1, '.', param(0, [0, 1, 0]), ECH);
  const kept = rr(QNAME, A, Buffer.from([192, 0, 2, 7]));
  for (const [what, rdata] of Object.entries({
    truncatedParam,
    outOfOrder,
    compressedTarget,
    oddMandatory,
  })) {
    const msg = message(HTTPS, [[rr(QNAME, HTTPS, rdata), kept], [], []]);
    t.deepEqual(stripEch(msg), message(HTTPS, [[kept], [], []]), what);
  }
});

test('compression pointers behind a shortened or dropped record point to the same names', (t) => {
  // Answer: the HTTPS record, shortened. Authority: example.test NS ns1.example.test. Additional: an
  // SVCB record that goes (mandatory ech), then A records named by pointers into the NS record's
  // RDATA and into the dropped record's owner name, both behind what was removed.
  const msg = message(HTTPS, [
    [rr(QNAME, HTTPS, svcb(1, '.', ALPN, ECH))],
    [rr(pointer(16), NS, Buffer.concat([Buffer.from([3, 0x6e, 0x73, 0x31]), pointer(16)]))],
    [],
  ]);
  const nsTarget = msg.length - 6; // the label "ns1" in the NS record's RDATA
  const svcbOwner = msg.length;
  const additional = [
    rr(
      Buffer.concat([Buffer.from([3, 0x73, 0x76, 0x63]), pointer(16)]),
      SVCB,
      svcb(1, '.', param(0, [0, 5]), ECH),
    ),
    rr(pointer(nsTarget), A, Buffer.from([192, 0, 2, 53])),
    rr(pointer(svcbOwner), A, Buffer.from([192, 0, 2, 80])),
  ];
  const whole = Buffer.concat([msg, ...additional]);
  whole.writeUInt16BE(3, 10);
  const stripped = stripEch(whole);
  t.truthy(stripped);
  const decoded = dnsPacket.decode(stripped!);
  const names = (rrs?: dnsPacket.Answer[]) => (rrs ?? []).map((r) => `${r.name} ${r.type}`);
  t.deepEqual(names(decoded.answers), ['www.example.test UNKNOWN_65']);
  t.deepEqual(names(decoded.authorities), ['example.test NS']);
  t.is((decoded.authorities?.[0] as { data?: string } | undefined)?.data, 'ns1.example.test');
  t.deepEqual(names(decoded.additionals), ['ns1.example.test A', 'svc.example.test A']);
  t.is(stripped!.length, whole.length - ECH.length - additional[0]!.length + 'svc'.length + 1);
  // The first pointer moved with the name it points to; the second is spelled out with its labels.
  t.deepEqual(stripped!.subarray(-36, -34), pointer(nsTarget - ECH.length));
});

test('a message without HTTPS or SVCB records, or without ech in them, comes back byte for byte', (t) => {
  const plain = dnsPacket.encode({
    type: 'response',
    id: 9,
    flags: dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE,
    questions: [{ type: 'A', name: 'www.example.test' }],
    answers: [
      { type: 'CNAME', name: 'www.example.test', ttl: 60, data: 'edge.cdn.test' },
      { type: 'A', name: 'edge.cdn.test', ttl: 60, data: '203.0.113.5' },
    ],
    authorities: [{ type: 'NS', name: 'cdn.test', ttl: 60, data: 'ns.cdn.test' }],
    additionals: [{ type: 'A', name: 'ns.cdn.test', ttl: 60, data: '203.0.113.53' }],
  });
  const noEch = message(HTTPS, [[rr(QNAME, HTTPS, svcb(1, '.', ALPN, IPV4HINT))], [], []]);
  for (const msg of [plain, noEch]) {
    const out = stripEch(msg);
    t.deepEqual(out, msg);
    t.not(out, msg, 'a copy: the proxy writes the query id into it');
  }
});

test('a message it cannot walk is undefined; a cut one (TC) ends at its last whole record', (t) => {
  const https = rr(QNAME, HTTPS, svcb(1, '.', ALPN, ECH));
  const whole = message(HTTPS, [[https, https], [], []]);
  const cut = whole.subarray(0, -5);
  t.is(stripEch(cut), undefined);
  t.is(stripEch(Buffer.alloc(5)), undefined);
  const tc = Buffer.from(cut);
  tc.writeUInt16BE(0x8380, 2);
  t.deepEqual(stripEch(tc), message(HTTPS, [[rr(QNAME, HTTPS, svcb(1, '.', ALPN))], [], []], 0x8380));
});
