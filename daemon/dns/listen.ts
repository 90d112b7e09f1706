/**
 * The DNS proxy's listening side: a computer's port on one address, UDP and
 * TCP (length-framed messages, answered in order on each connection). Every
 * query goes to `handle`; its reply, if any, goes back to the asker.
 */
import dgram from 'node:dgram';
import net from 'node:net';
import { TcpFrames, tcpFrame } from './wire.js';

export type Transport = 'udp' | 'tcp';
export type Family = 'ipv4' | 'ipv6';
export type QueryHandler = (msg: Buffer, transport: Transport, family: Family) => Promise<Buffer | undefined>;

/** An idle TCP connection is closed after this long. */
const TCP_IDLE_MS = 30_000;

/** Binds UDP and TCP on address:port; rejects (with nothing left bound) if either cannot. */
export async function listenDns(
  address: string,
  port: number,
  handle: QueryHandler,
  onError: (err: Error) => void,
): Promise<{ udp: dgram.Socket; tcp: net.Server }> {
  const v6 = net.isIPv6(address);
  const family: Family = v6 ? 'ipv6' : 'ipv4';
  const udp = dgram.createSocket(v6 ? { type: 'udp6', ipv6Only: true } : { type: 'udp4' });
  const tcp = net.createServer((conn) => serveTcp(conn, family, handle));
  try {
    await new Promise<void>((resolve, reject) => {
      udp.once('error', reject);
      udp.bind(port, address, () => {
        udp.off('error', reject);
        resolve();
      });
    });
    await new Promise<void>((resolve, reject) => {
      tcp.once('error', reject);
      tcp.listen({ port, host: address, ...(v6 ? { ipv6Only: true } : {}) }, () => {
        tcp.off('error', reject);
        resolve();
      });
    });
  } catch (err) {
    udp.close();
    tcp.close();
    throw err;
  }
  udp.on('message', (msg, rinfo) => {
    void handle(msg, 'udp', family).then((reply) => {
      if (reply) udp.send(reply, rinfo.port, rinfo.address);
    });
  });
  udp.on('error', onError);
  return { udp, tcp };
}

function serveTcp(conn: net.Socket, family: Family, handle: QueryHandler): void {
  const frames = new TcpFrames();
  let chain = Promise.resolve();
  conn.setTimeout(TCP_IDLE_MS, () => conn.destroy());
  conn.on('error', () => conn.destroy());
  conn.on('data', (chunk) => {
    for (const msg of frames.push(chunk)) {
      chain = chain.then(async () => {
        const reply = await handle(msg, 'tcp', family);
        if (reply && !conn.destroyed) conn.write(tcpFrame(reply));
      });
    }
  });
}
