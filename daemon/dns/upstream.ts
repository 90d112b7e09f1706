/**
 * The DNS proxy's side towards its resolvers. A query is asked of a list of
 * upstreams in order, each with the full timeout; the next one is asked when
 * one
 * - does not answer in time (UDP; a closed port on a UDP upstream shows only
 *   as silence, so this costs the whole timeout),
 * - cannot be reached (TCP: connection refused or reset, or closed before
 *   its answer), or
 * - answers SERVFAIL, NOTIMP or REFUSED: it cannot or will not answer, and
 *   glibc's stub resolver moves on to its next nameserver for the same three.
 * Any other answer, NXDOMAIN included, is final: the next resolver is not
 * asked to overrule it (nor told the name). When every one failed, the last
 * answer received is passed on (a SERVFAIL or REFUSED from upstream), or
 * none at all (the proxy then answers SERVFAIL itself).
 *
 * UDP goes out through up to four sockets per upstream, picked at random per
 * query, under a fresh random query id; TCP opens a connection per query.
 */
import { randomInt } from 'node:crypto';
import dgram from 'node:dgram';
import net from 'node:net';
import type { Logger } from 'pino';
import { RCODE, rcodeOf, TcpFrames, tcpFrame } from './wire.js';

export interface Upstream {
  host: string;
  port: number;
}

/** "1.2.3.4", "1.2.3.4:5353", "[2001:db8::1]:53" or "2001:db8::1" → host and port. */
export function parseHostPort(text: string, defaultPort: number): Upstream | undefined {
  const bracket = /^\[([^\]]+)\](?::(\d{1,5}))?$/.exec(text);
  const plain = /^([0-9.]+)(?::(\d{1,5}))?$/.exec(text);
  const m = bracket ?? plain ?? (net.isIP(text) === 6 ? [text, text, undefined] : null);
  if (!m || !net.isIP(m[1] ?? '')) return undefined;
  const port = m[2] === undefined ? defaultPort : Number(m[2]);
  return port >= 1 && port <= 65535 ? { host: m[1]!, port } : undefined;
}

/** The nameservers of an /etc/resolv.conf, in its order (IPv6 ones bracketed, for a :port). */
export function systemResolvers(text: string): string[] {
  return [...text.matchAll(/^\s*nameserver\s+(\S+)/gm)].map((m) =>
    net.isIP(m[1] ?? '') === 6 ? `[${m[1]}]` : (m[1] ?? ''),
  );
}

/** "host|port": one key per resolver (hosts as the proxy was given them; the API stores them normalised). */
export function upstreamKey(u: Upstream): string {
  return `${u.host}|${u.port}`;
}

/** Answers after which the next upstream is asked. */
const TRY_NEXT: ReadonlySet<number> = new Set([RCODE.SERVFAIL, RCODE.NOTIMP, RCODE.REFUSED]);

export interface Asked {
  /** The answer to pass on, its id as sent upstream; undefined when none came. */
  answer: Buffer | undefined;
  /** How many upstreams failed before the one that answered (or all of them). */
  fallbacks: number;
}

export class UpstreamClient {
  /** UDP sockets to each upstream in use, by upstreamKey: up to four each. */
  private readonly sockets = new Map<string, dgram.Socket[]>();
  private readonly pending = new Map<
    string,
    { finish: (answer: Buffer | undefined) => void; deadline: number }
  >();
  /** One timer for every deadline (a timer per query costs more than the query). */
  private readonly deadlines: NodeJS.Timeout;

  constructor(private readonly opts: { timeoutMs: number; log: Logger }) {
    this.deadlines = setInterval(() => {
      const now = Date.now();
      for (const p of this.pending.values()) if (p.deadline <= now) p.finish(undefined);
    }, 100).unref();
  }

  /** Asks `upstreams` in order (see the top of this file). */
  async ask(upstreams: readonly Upstream[], msg: Buffer, transport: 'udp' | 'tcp'): Promise<Asked> {
    let last: Buffer | undefined;
    for (const [i, upstream] of upstreams.entries()) {
      const answer =
        transport === 'tcp' ? await this.askTcp(msg, upstream) : await this.askUdp(msg, upstream);
      if (answer && !TRY_NEXT.has(rcodeOf(answer))) return { answer, fallbacks: i };
      last = answer ?? last;
      if (i < upstreams.length - 1) {
        this.opts.log.debug(
          { upstream: upstreamKey(upstream), rcode: answer ? rcodeOf(answer) : 'none', transport },
          'upstream failed; asking the next',
        );
      }
    }
    return { answer: last, fallbacks: upstreams.length };
  }

  /** Closes the UDP sockets of an upstream no longer in use (a query waiting on them gets no answer). */
  drop(upstream: Upstream): void {
    const key = upstreamKey(upstream);
    const sockets = this.sockets.get(key);
    if (!sockets) return;
    this.sockets.delete(key);
    for (const [k, p] of this.pending) if (k.startsWith(`${key}#`)) p.finish(undefined);
    for (const u of sockets) u?.close();
  }

  close(): void {
    clearInterval(this.deadlines);
    for (const sockets of this.sockets.values()) for (const u of sockets) u?.close();
    this.sockets.clear();
    for (const p of this.pending.values()) p.finish(undefined);
  }

  /** One of the upstream's UDP sockets, and the prefix of its pending keys. */
  private udpSocket(upstream: Upstream): { socket: dgram.Socket; prefix: string } {
    const key = upstreamKey(upstream);
    let sockets = this.sockets.get(key);
    if (!sockets) {
      sockets = [];
      this.sockets.set(key, sockets);
    }
    const index = randomInt(4);
    const prefix = `${key}#${index}:`;
    let socket = sockets[index];
    if (!socket) {
      socket = dgram.createSocket(net.isIPv6(upstream.host) ? 'udp6' : 'udp4');
      socket.on('message', (answer, rinfo) => {
        if (rinfo.address !== upstream.host || rinfo.port !== upstream.port || answer.length < 2) return;
        this.pending.get(`${prefix}${answer.readUInt16BE(0)}`)?.finish(answer);
      });
      socket.on('error', (err) =>
        this.opts.log.warn({ err: err.message, upstream: key }, 'upstream socket error'),
      );
      sockets[index] = socket;
    }
    return { socket, prefix };
  }

  /** The answer with the fresh id the query went out under, or undefined at the deadline. */
  private askUdp(msg: Buffer, upstream: Upstream): Promise<Buffer | undefined> {
    const { socket, prefix } = this.udpSocket(upstream);
    let id = randomInt(65536);
    while (this.pending.has(`${prefix}${id}`)) id = randomInt(65536);
    const key = `${prefix}${id}`;
    const out = Buffer.from(msg);
    out.writeUInt16BE(id, 0);
    return new Promise((resolve) => {
      const finish = (answer: Buffer | undefined) => {
        this.pending.delete(key);
        resolve(answer);
      };
      this.pending.set(key, { finish, deadline: Date.now() + this.opts.timeoutMs });
      socket.send(out, upstream.port, upstream.host, (err) => {
        if (err) finish(undefined);
      });
    });
  }

  private askTcp(msg: Buffer, upstream: Upstream): Promise<Buffer | undefined> {
    return new Promise((resolve) => {
      const id = randomInt(65536);
      const conn = net.connect({ host: upstream.host, port: upstream.port });
      const frames = new TcpFrames();
      const timer = setTimeout(() => finish(undefined), this.opts.timeoutMs);
      const finish = (answer: Buffer | undefined) => {
        clearTimeout(timer);
        conn.destroy();
        resolve(answer);
      };
      conn.on('error', () => finish(undefined));
      conn.on('close', () => finish(undefined));
      conn.on('connect', () => {
        const out = Buffer.from(msg);
        out.writeUInt16BE(id, 0);
        conn.write(tcpFrame(out));
      });
      conn.on('data', (chunk) => {
        const [answer] = frames.push(chunk);
        if (answer) finish(answer.length >= 2 && answer.readUInt16BE(0) === id ? answer : undefined);
      });
    });
  }
}
