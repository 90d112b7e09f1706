/**
 * UpstreamClient.ask without a kernel: UDP and TCP resolvers on loopback
 * that answer every query with one rcode (or stay silent), asked in order.
 */
import dgram from 'node:dgram';
import { once } from 'node:events';
import net from 'node:net';
import test from 'ava';
import dnsPacket from 'dns-packet';
import { pino } from 'pino';
import { parseHostPort, systemResolvers, type Upstream, UpstreamClient } from '../../daemon/dns/upstream.js';
import { rcodeOf, TcpFrames, tcpFrame } from '../../daemon/dns/wire.js';

const RCODES = { NOERROR: 0, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;
type Rcode = keyof typeof RCODES | 'silent';

function answer(query: Buffer, rcode: Rcode): Buffer {
  const q = dnsPacket.decode(query);
  return dnsPacket.encode({
    type: 'response',
    id: q.id ?? 0,
    flags: RCODES[rcode as keyof typeof RCODES] ?? 0,
    questions: q.questions ?? [],
  });
}

/** A resolver on 127.0.0.1 (UDP and TCP, one port) answering `rcode`; `asked` counts its queries. */
async function resolver(rcode: Rcode): Promise<Upstream & { asked: () => number; close(): void }> {
  let asked = 0;
  const tcp = net.createServer((conn) => {
    const frames = new TcpFrames();
    conn.on('data', (chunk) => {
      for (const q of frames.push(chunk)) {
        asked++;
        if (rcode !== 'silent') conn.write(tcpFrame(answer(q, rcode)));
      }
    });
  });
  tcp.listen(0, '127.0.0.1');
  await once(tcp, 'listening');
  const port = (tcp.address() as net.AddressInfo).port;
  const udp = dgram.createSocket('udp4');
  udp.on('message', (q, rinfo) => {
    asked++;
    if (rcode !== 'silent') udp.send(answer(q, rcode), rinfo.port, rinfo.address);
  });
  await new Promise<void>((r) => udp.bind(port, '127.0.0.1', r));
  return {
    host: '127.0.0.1',
    port,
    asked: () => asked,
    close: () => {
      tcp.close();
      udp.close();
    },
  };
}

const QUERY = dnsPacket.encode({ type: 'query', id: 7, questions: [{ type: 'A', name: 'x.test' }] });

async function ask(rcodes: Rcode[], transport: 'udp' | 'tcp') {
  const servers = await Promise.all(rcodes.map(resolver));
  const client = new UpstreamClient({ timeoutMs: 300, log: pino({ level: 'silent' }) });
  try {
    const { answer, fallbacks } = await client.ask(servers, QUERY, transport);
    return { rcode: answer ? rcodeOf(answer) : undefined, fallbacks, asked: servers.map((s) => s.asked()) };
  } finally {
    client.close();
    for (const s of servers) s.close();
  }
}

for (const transport of ['udp', 'tcp'] as const) {
  test(`${transport}: SERVFAIL, NOTIMP, REFUSED and silence pass to the next; the first other answer is final`, async (t) => {
    t.deepEqual(await ask(['silent', 'SERVFAIL', 'NOTIMP', 'REFUSED', 'NOERROR', 'NOERROR'], transport), {
      rcode: 0,
      fallbacks: 4,
      asked: [1, 1, 1, 1, 1, 0],
    });
    t.deepEqual(await ask(['NXDOMAIN', 'NOERROR'], transport), { rcode: 3, fallbacks: 0, asked: [1, 0] });
  });

  test(`${transport}: when every one fails, the last answer received is passed on, or none`, async (t) => {
    t.deepEqual(await ask(['REFUSED', 'SERVFAIL', 'silent'], transport), {
      rcode: 2,
      fallbacks: 3,
      asked: [1, 1, 1],
    });
    t.deepEqual(await ask(['silent'], transport), { rcode: undefined, fallbacks: 1, asked: [1] });
  });
}

test('tcp: an upstream that refuses the connection is passed at once', async (t) => {
  const gone = await resolver('NOERROR');
  gone.close();
  const good = await resolver('NOERROR');
  t.teardown(() => good.close());
  const client = new UpstreamClient({ timeoutMs: 5000, log: pino({ level: 'silent' }) });
  t.teardown(() => client.close());
  const started = Date.now();
  const { answer, fallbacks } = await client.ask([gone, good], QUERY, 'tcp');
  t.is(rcodeOf(answer!), 0);
  t.is(fallbacks, 1);
  t.true(Date.now() - started < 5000);
});

test('TcpFrames: messages split and joined across chunks come out whole, in order', (t) => {
  const a = tcpFrame(Buffer.from('first'));
  const b = tcpFrame(Buffer.from('second message'));
  const frames = new TcpFrames();
  const all = Buffer.concat([a, b]);
  const out = [
    ...frames.push(all.subarray(0, 1)),
    ...frames.push(all.subarray(1, 9)),
    ...frames.push(all.subarray(9)),
  ];
  t.deepEqual(
    out.map((m) => m.toString()),
    ['first', 'second message'],
  );
});

test('parseHostPort and systemResolvers', (t) => {
  t.deepEqual(parseHostPort('192.0.2.53', 53), { host: '192.0.2.53', port: 53 });
  t.deepEqual(parseHostPort('[2001:db8::1]:5353', 53), { host: '2001:db8::1', port: 5353 });
  t.deepEqual(parseHostPort('2001:db8::1', 53), { host: '2001:db8::1', port: 53 });
  t.is(parseHostPort('resolver.example', 53), undefined);
  t.is(parseHostPort('192.0.2.53:0', 53), undefined);
  t.deepEqual(systemResolvers('# x\nnameserver 192.0.2.1\nnameserver 2001:db8::1\noptions rotate\n'), [
    '192.0.2.1',
    '[2001:db8::1]',
  ]);
});
