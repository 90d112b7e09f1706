/** capAnswerTtls: no client caches an answer longer than the kernel keeps its addresses. */
import test from 'ava';
import dnsPacket from 'dns-packet';
import { capAnswerTtls } from '../../daemon/dns/wire.js';

const ttls = (msg: Buffer) => (dnsPacket.decode(msg).answers ?? []).map((a) => (a as { ttl?: number }).ttl);

test('answer TTLs above the cap come down to it; the others stay', (t) => {
  const msg = dnsPacket.encode({
    type: 'response',
    id: 7,
    questions: [{ type: 'A', name: 'www.example.test' }],
    answers: [
      { type: 'CNAME', name: 'www.example.test', ttl: 7200, data: 'edge.cdn.test' },
      { type: 'A', name: 'edge.cdn.test', ttl: 100, data: '203.0.113.5' },
      { type: 'A', name: 'edge.cdn.test', ttl: 90000, data: '203.0.113.6' },
    ],
    additionals: [{ type: 'A', name: 'ns.cdn.test', ttl: 90000, data: '203.0.113.53' }],
  });
  capAnswerTtls(msg, 3600);
  t.deepEqual(ttls(msg), [3600, 100, 3600]);
  const additional = dnsPacket.decode(msg).additionals?.[0] as { ttl?: number } | undefined;
  t.is(additional?.ttl, 90000, 'only the answer section');
});

test('compressed names (pointers) are walked', (t) => {
  // Header, question "a.test A IN", then two answers named by a pointer to offset 12.
  const header = Buffer.from([0, 1, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0]);
  const question = Buffer.from([1, 0x61, 4, 0x74, 0x65, 0x73, 0x74, 0, 0, 1, 0, 1]);
  const rr = (ttl: number, last: number) => {
    const b = Buffer.from([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 203, 0, 113, last]);
    b.writeUInt32BE(ttl, 6);
    return b;
  };
  const msg = Buffer.concat([header, question, rr(86400, 1), rr(30, 2)]);
  capAnswerTtls(msg, 3600);
  t.deepEqual(ttls(msg), [3600, 30]);
});

test('a truncated or malformed message is left as it is', (t) => {
  const msg = Buffer.from([0, 1, 0x81, 0x80, 0, 1, 0, 5, 0, 0, 0, 0, 3, 0x61]);
  const copy = Buffer.from(msg);
  capAnswerTtls(msg, 1);
  t.deepEqual(msg, copy);
  t.notThrows(() => capAnswerTtls(Buffer.alloc(3), 1));
});
