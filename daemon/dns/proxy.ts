/**
 * The DNS proxy. The kernel hooks send every governed computer's DNS (UDP
 * and TCP to port 53, any resolver) to the computer's own proxy port, so the
 * port says who asked; the proxy forwards to the upstream resolver and,
 * before it releases an answer, writes the A/AAAA addresses of names the
 * computer's policy lists into that computer's learned map. If that write
 * fails, or the upstream does not answer in time, the answer is SERVFAIL:
 * fail closed, and counted.
 *
 * What it forwards at all is the policy's `dns` (DNS is itself a way out: a
 * query carries its name to whoever is authoritative for it):
 * - listed: a query is forwarded only when its name is one the hostname
 *   rules cover (exact, or below a `*.` suffix), and only for A, AAAA,
 *   CNAME, HTTPS and SVCB, rebuilt from its question (questionOnly: nothing
 *   else the client sent goes upstream); the answer's CNAME chain, which
 *   starts at that name, is followed as usual. Any other name is answered NXDOMAIN by the
 *   proxy at once (a deny event, `dns_unlisted`); any other type of a
 *   covered name (TXT, NULL, ANY, MX, ...) is answered NOERROR with no
 *   records ("no data"): the name exists, it has nothing of that type for
 *   this computer. Not NOTIMP, which stub resolvers read as a broken server
 *   (they try the next one, or report a server failure) although it is one
 *   question they may not ask.
 * - all: everything is forwarded (as before `dns` existed).
 * - none: every query is answered NXDOMAIN by the proxy at once (a deny
 *   event, `dns_refused`). Not REFUSED: musl's stub resolver ignores a
 *   REFUSED answer and waits for its timeout (5 s), as it did for the send
 *   that the kernel refused before; NXDOMAIN ends a lookup at once in musl
 *   and glibc alike.
 * Answers the proxy makes itself carry an Extended DNS Error (RFC 8914,
 * 15 "Blocked", with a text naming egressd's policy) when the query had
 * EDNS, so that `dig` shows why.
 *
 * - allowlist: listed names' addresses become reachable for the answer's TTL
 *   (clamped to [ttlFloor, ttlCeiling]).
 * - denylist: listed names are resolved (so their addresses can be denied)
 *   and answered NXDOMAIN. Best effort: an application can hard-code
 *   addresses.
 * - isolated: answered, nothing learned (nothing connects anyway).
 * A CNAME chain counts as listed when any name in it is. Addresses that
 * would open loopback, unspecified, link-local or this host's own
 * addresses are never learned (DNS rebinding).
 *
 * Upstream: the first of `upstreams` (the agent's --dns-upstream), or the
 * computer's own (`ensure(id, port, { upstream })`: the computer's
 * `dns_upstream`, for a sandbox whose runtime has a resolver of its own,
 * such as a cluster DNS). Everything above is the same whichever answers.
 * UDP goes out through up to four sockets per upstream in use; when no
 * computer uses a computer's own upstream any more, its sockets are closed
 * (a query still waiting on them is answered SERVFAIL).
 */

import { randomInt } from 'node:crypto';
import dgram from 'node:dgram';
import net from 'node:net';
import os from 'node:os';
import dnsPacket from 'dns-packet';
import ipaddr from 'ipaddr.js';
import type { Logger } from 'pino';
import { EgressdError } from '../../policy/errors.js';
import type { UserDenial } from '../events.js';
import type { Enforcer } from '../kernel/enforcer.js';
import type { AgentMetrics } from '../metrics.js';

export interface Upstream {
  host: string;
  port: number;
}

export interface DnsProxyOptions {
  enforcer: Enforcer;
  upstreams: Upstream[];
  /** Addresses to listen on, per computer port: loopback for the host namespace, plus addresses reachable from sandboxes' own namespaces. */
  listen: string[];
  /** Ports the proxy may give computers, inclusive. */
  portRange: [number, number];
  /** TTL clamp for learned addresses, seconds. */
  ttlFloor: number;
  ttlCeiling: number;
  /** Upstream answer deadline. */
  timeoutMs: number;
  log: Logger;
  metrics?: AgentMetrics;
  /** Told of every learned name after its map write (the agent publishes them). */
  onLearned?: (id: string, name: string, addresses: number[][], ttlSeconds: number) => void;
  /** Told of every query the policy's `dns` refused (the agent's deny events: DenyEvents.submit). */
  onDenied?: (denial: UserDenial) => void;
}

export interface DnsStats {
  queries: number;
  answered: number;
  nxdomain: number;
  /** Answers replaced by SERVFAIL because the map write failed or the upstream timed out. */
  failClosed: number;
  /** Learned-map writes (an address learned again within its lifetime is not written again). */
  learned: number;
  /** dns listed: names answered NXDOMAIN by the proxy, not forwarded (not covered by the rules). */
  unlisted: number;
  /** dns listed: covered names asked for a type that is not forwarded, answered with no records. */
  typeNotForwarded: number;
  /** dns none: queries answered by the proxy, not forwarded. */
  refused: number;
}

interface ComputerSockets {
  port: number;
  /** The computer's own resolver; undefined: the proxy's default (upstreams[0]). */
  upstream?: Upstream;
  udp: dgram.Socket[];
  tcp: net.Server[];
}

const RCODE = { NOERROR: 0, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4 } as const;
const MAX_TCP_MESSAGE = 65535;

/**
 * Query types that `dns: listed` forwards for covered names: addresses,
 * aliases, and the service bindings (RFC 9460) that browsers ask for. This
 * dns-packet spells 64 and 65 as UNKNOWN_64 and UNKNOWN_65; later ones as
 * SVCB and HTTPS.
 */
const LISTED_TYPES: ReadonlySet<string> = new Set([
  'A',
  'AAAA',
  'CNAME',
  'SVCB',
  'HTTPS',
  'UNKNOWN_64',
  'UNKNOWN_65',
]);

/** RFC 8914 Extended DNS Error option (EDNS option 15), INFO-CODE 15 "Blocked". */
const EDE_OPTION = 15;
const EDE_BLOCKED = 15;

export class DnsProxy {
  readonly stats: DnsStats = {
    queries: 0,
    answered: 0,
    nxdomain: 0,
    failClosed: 0,
    learned: 0,
    unlisted: 0,
    typeNotForwarded: 0,
    refused: 0,
  };
  private readonly computers = new Map<string, ComputerSockets>();
  private readonly usedPorts = new Set<number>();
  private readonly ownAddresses: Set<string>;
  /** UDP sockets to each upstream in use, by upstreamKey: up to four each, picked at random per query. */
  private readonly upstreamSockets = new Map<string, dgram.Socket[]>();
  private readonly pending = new Map<
    string,
    { finish: (answer: Buffer | undefined) => void; deadline: number }
  >();
  /** One timer for every upstream deadline (a timer per query costs more than the query). */
  private readonly deadlines: NodeJS.Timeout;
  private closed = false;

  constructor(private readonly opts: DnsProxyOptions) {
    if (opts.upstreams.length === 0) throw new Error('the DNS proxy needs at least one upstream resolver');
    this.deadlines = setInterval(() => {
      const now = Date.now();
      for (const p of this.pending.values()) if (p.deadline <= now) p.finish(undefined);
    }, 100).unref();
    this.ownAddresses = new Set(
      Object.values(os.networkInterfaces())
        .flat()
        .map((i) => i?.address ?? '')
        .filter((a) => a !== ''),
    );
  }

  /**
   * The computer's proxy port, with sockets bound on every listen address;
   * `preferred` first (a restart keeps ports). `upstream`: the resolver its
   * queries go to (its `dns_upstream`); absent, the proxy's default. Called
   * again, it keeps the port and takes the upstream given.
   */
  async ensure(
    id: string,
    preferred = 0,
    options: { upstream?: Upstream | undefined } = {},
  ): Promise<number> {
    const existing = this.computers.get(id);
    if (existing) {
      this.setUpstream(existing, options.upstream);
      return existing.port;
    }
    const [min, max] = this.opts.portRange;
    const used = this.usedPorts;
    function* candidates() {
      if (preferred >= min && preferred <= max) yield preferred;
      for (let tries = 0; tries < 50; tries++) yield min + randomInt(max - min + 1);
      // Random picks miss the last free ports of a nearly full range: then every port, in order.
      for (let port = min; port <= max && used.size < max - min + 1; port++) yield port;
    }
    for (const port of candidates()) {
      if (this.usedPorts.has(port)) continue;
      this.usedPorts.add(port);
      try {
        const sockets = await this.bind(id, port);
        this.computers.set(id, sockets);
        this.setUpstream(sockets, options.upstream);
        return port;
      } catch (err) {
        this.usedPorts.delete(port);
        if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err;
      }
    }
    throw new EgressdError(
      'DNS_PORTS_EXHAUSTED',
      `no free DNS proxy port in ${min}-${max} (${this.usedPorts.size} in use): widen --dns-ports`,
    );
  }

  portOf(id: string): number | undefined {
    return this.computers.get(id)?.port;
  }

  /** The resolver the computer's queries go to: its own, or the proxy's default; undefined without a port. */
  upstreamOf(id: string): Upstream | undefined {
    const s = this.computers.get(id);
    return s ? (s.upstream ?? this.opts.upstreams[0]) : undefined;
  }

  private setUpstream(sockets: ComputerSockets, upstream: Upstream | undefined): void {
    const before = sockets.upstream;
    if (before && upstream && upstreamKey(before) === upstreamKey(upstream)) return;
    if (upstream) sockets.upstream = { host: upstream.host, port: upstream.port };
    else delete sockets.upstream;
    if (before) this.dropUnusedUpstream(before);
  }

  /** Closes the UDP sockets of a computer's own upstream that no computer uses any more. */
  private dropUnusedUpstream(upstream: Upstream): void {
    const key = upstreamKey(upstream);
    const fallback = this.opts.upstreams[0];
    if (fallback && upstreamKey(fallback) === key) return;
    for (const s of this.computers.values()) if (s.upstream && upstreamKey(s.upstream) === key) return;
    const sockets = this.upstreamSockets.get(key);
    if (!sockets) return;
    this.upstreamSockets.delete(key);
    for (const [k, p] of this.pending) if (k.startsWith(`${key}#`)) p.finish(undefined);
    for (const u of sockets) u?.close();
  }

  /** Closes the computer's sockets and frees its port. */
  release(id: string): void {
    const s = this.computers.get(id);
    if (!s) return;
    this.computers.delete(id);
    this.usedPorts.delete(s.port);
    for (const u of s.udp) u.close();
    for (const t of s.tcp) t.close();
    if (s.upstream) this.dropUnusedUpstream(s.upstream);
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const id of [...this.computers.keys()]) this.release(id);
    clearInterval(this.deadlines);
    for (const sockets of this.upstreamSockets.values()) for (const u of sockets) u?.close();
    this.upstreamSockets.clear();
    for (const p of this.pending.values()) p.finish(undefined);
  }

  private async bind(id: string, port: number): Promise<ComputerSockets> {
    const sockets: ComputerSockets = { port, udp: [], tcp: [] };
    try {
      for (const address of this.opts.listen) {
        const v6 = net.isIPv6(address);
        const udp = dgram.createSocket(v6 ? { type: 'udp6', ipv6Only: true } : { type: 'udp4' });
        sockets.udp.push(udp);
        await new Promise<void>((resolve, reject) => {
          udp.once('error', reject);
          udp.bind(port, address, () => {
            udp.off('error', reject);
            resolve();
          });
        });
        udp.on('message', (msg, rinfo) => {
          void this.handle(id, msg, 'udp', v6 ? 'ipv6' : 'ipv4').then((reply) => {
            if (reply && !this.closed) udp.send(reply, rinfo.port, rinfo.address);
          });
        });
        udp.on('error', (err) =>
          this.opts.log.warn({ computer: id, err: err.message }, 'DNS proxy socket error'),
        );
        const tcp = net.createServer((conn) => this.serveTcp(id, conn, v6 ? 'ipv6' : 'ipv4'));
        sockets.tcp.push(tcp);
        await new Promise<void>((resolve, reject) => {
          tcp.once('error', reject);
          tcp.listen({ port, host: address, ...(v6 ? { ipv6Only: true } : {}) }, () => {
            tcp.off('error', reject);
            resolve();
          });
        });
      }
      return sockets;
    } catch (err) {
      for (const u of sockets.udp) u.close();
      for (const t of sockets.tcp) t.close();
      throw err;
    }
  }

  /** DNS over TCP: 2-byte length-prefixed messages, answered in order. */
  private serveTcp(id: string, conn: net.Socket, family: Family): void {
    let buffered = Buffer.alloc(0);
    let chain = Promise.resolve();
    conn.setTimeout(30_000, () => conn.destroy());
    conn.on('error', () => conn.destroy());
    conn.on('data', (chunk) => {
      buffered = Buffer.concat([buffered, chunk]);
      while (buffered.length >= 2) {
        const len = buffered.readUInt16BE(0);
        if (buffered.length < 2 + len) break;
        const msg = buffered.subarray(2, 2 + len);
        buffered = buffered.subarray(2 + len);
        chain = chain.then(async () => {
          const reply = await this.handle(id, msg, 'tcp', family);
          if (reply && !conn.destroyed) {
            const frame = Buffer.alloc(2 + reply.length);
            frame.writeUInt16BE(reply.length);
            reply.copy(frame, 2);
            conn.write(frame);
          }
        });
      }
    });
  }

  /**
   * One query of computer `id`, which came over `transport` to a socket of
   * `family`: the reply to send, or undefined to stay silent (garbage in).
   */
  async handle(
    id: string,
    msg: Buffer,
    transport: Transport,
    family: Family = 'ipv4',
  ): Promise<Buffer | undefined> {
    const started = process.hrtime.bigint();
    const failedBefore = this.stats.failClosed;
    const reply = await this.answer(id, msg, transport, family);
    const m = this.opts.metrics;
    if (m && reply) {
      m.dnsQueries.inc();
      m.dnsSeconds.observe(Number(process.hrtime.bigint() - started) / 1e9);
      if (this.stats.failClosed > failedBefore) m.dnsFailClosed.inc(this.stats.failClosed - failedBefore);
    }
    return reply;
  }

  private async answer(
    id: string,
    msg: Buffer,
    transport: Transport,
    family: Family,
  ): Promise<Buffer | undefined> {
    let query: dnsPacket.Packet;
    try {
      query = dnsPacket.decode(msg);
    } catch {
      return undefined;
    }
    const question = query.questions?.[0];
    if (query.type !== 'query' || !question || query.questions?.length !== 1) return undefined;
    this.stats.queries++;
    const qname = normaliseName(question.name);
    const mode = this.opts.enforcer.modeOf(id);
    const dns = this.opts.enforcer.dnsOf(id);
    if (mode === undefined || dns === undefined) {
      // A port whose computer this process has not attached yet (an agent that just started):
      // nothing to go by, so nothing is forwarded; the client asks again.
      this.stats.failClosed++;
      return errorReply(query, RCODE.SERVFAIL);
    }
    // The proxy's own NXDOMAIN for a name the policy does not resolve: a deny event, nothing forwarded.
    const refuse = (reason: 'dns_refused' | 'dns_unlisted', why: string) => {
      this.opts.onDenied?.({ computer: id, reason, hostname: qname, family, protocol: transport });
      return errorReply(query, RCODE.NXDOMAIN, `egressd: ${why}`);
    };
    if (dns === 'none') {
      this.stats.refused++;
      return refuse('dns_refused', "this computer's policy resolves no names (dns none)");
    }
    let forwarded = msg;
    if (dns === 'listed') {
      if ((query as { opcode?: string }).opcode !== 'QUERY') {
        // NOTIFY, UPDATE, ...: not a question about a name; nothing to forward.
        this.stats.typeNotForwarded++;
        return errorReply(query, RCODE.NOTIMP);
      }
      if (!this.opts.enforcer.listsName(id, [qname])) {
        this.stats.unlisted++;
        return refuse(
          'dns_unlisted',
          "no hostname rule of this computer's policy covers the name (dns listed)",
        );
      }
      if (!LISTED_TYPES.has(question.type) || (question.class ?? 'IN') !== 'IN') {
        this.stats.typeNotForwarded++;
        return errorReply(
          query,
          RCODE.NOERROR,
          'egressd: only A, AAAA, CNAME, HTTPS and SVCB are resolved for listed names (dns listed)',
        );
      }
      forwarded = questionOnly(query, question);
    }
    const answer = await this.forward(id, forwarded, transport);
    if (!answer) {
      this.stats.failClosed++;
      this.opts.log.warn({ computer: id, name: qname }, 'upstream did not answer in time: SERVFAIL');
      return errorReply(query, RCODE.SERVFAIL);
    }
    let response: dnsPacket.Packet;
    try {
      response = dnsPacket.decode(answer);
    } catch {
      this.stats.failClosed++;
      return errorReply(query, RCODE.SERVFAIL);
    }
    const rq = response.questions?.[0];
    if (!rq || normaliseName(rq.name) !== qname || rq.type !== question.type) {
      this.stats.failClosed++;
      return errorReply(query, RCODE.SERVFAIL);
    }
    // No client may cache the answer longer than the kernel keeps its addresses.
    let ttlCap = this.opts.ttlCeiling;
    if (mode === 'allowlist' || mode === 'denylist') {
      const { names, addresses, ttl } = resolveChain(qname, response.answers ?? []);
      if (this.opts.enforcer.listsName(id, names)) {
        const safe = addresses.filter((a) => this.learnable(a));
        const clamped = Math.min(Math.max(ttl, this.opts.ttlFloor), this.opts.ttlCeiling);
        try {
          if (safe.length > 0) {
            const learned = this.opts.enforcer.learn(id, names, safe, clamped);
            if (!learned) throw new Error('policy no longer lists the name');
            ttlCap = Math.min(ttlCap, Math.floor(learned.lifetimeS));
            this.stats.learned += learned.written.length;
            if (learned.written.length > 0) this.opts.onLearned?.(id, qname, learned.written, clamped);
          }
        } catch (err) {
          // Fail closed: no answer without its map write.
          this.stats.failClosed++;
          this.opts.log.error(
            { computer: id, name: qname, err: (err as Error).message },
            'learned-map write failed: SERVFAIL',
          );
          return errorReply(query, RCODE.SERVFAIL);
        }
        if (mode === 'denylist') {
          this.stats.nxdomain++;
          return errorReply(query, RCODE.NXDOMAIN);
        }
      }
    }
    this.stats.answered++;
    const reply = Buffer.from(answer);
    reply.writeUInt16BE(query.id ?? 0, 0);
    if (mode === 'allowlist') capAnswerTtls(reply, ttlCap);
    return reply;
  }

  private learnable(bytes: number[]): boolean {
    if (bytes.length === 4) {
      const [a = 0, b = 0] = bytes;
      if (a === 0 || a === 127 || (a === 169 && b === 254) || a >= 224) return false;
      return !this.ownAddresses.has(bytes.join('.'));
    }
    const addr = ipaddr.fromByteArray(bytes);
    const range = addr.range();
    if (['loopback', 'unspecified', 'linkLocal', 'multicast', 'broadcast', 'ipv4Mapped'].includes(range))
      return false;
    return !this.ownAddresses.has(addr.toString());
  }

  /** Sends the query upstream under a fresh random id; the answer with that id, or undefined at the deadline. */
  private forward(id: string, msg: Buffer, transport: 'udp' | 'tcp'): Promise<Buffer | undefined> {
    const upstream = this.computers.get(id)?.upstream ?? this.opts.upstreams[0]!;
    return transport === 'tcp' ? this.forwardTcp(msg, upstream) : this.forwardUdp(msg, upstream);
  }

  /** One of the upstream's UDP sockets, and the prefix of its pending keys. */
  private upstreamSocket(upstream: Upstream): { socket: dgram.Socket; prefix: string } {
    const key = upstreamKey(upstream);
    let sockets = this.upstreamSockets.get(key);
    if (!sockets) {
      sockets = [];
      this.upstreamSockets.set(key, sockets);
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

  private forwardUdp(msg: Buffer, upstream: Upstream): Promise<Buffer | undefined> {
    const { socket, prefix } = this.upstreamSocket(upstream);
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

  private forwardTcp(msg: Buffer, upstream: Upstream): Promise<Buffer | undefined> {
    return new Promise((resolve) => {
      const id = randomInt(65536);
      const conn = net.connect({ host: upstream.host, port: upstream.port });
      let buffered = Buffer.alloc(0);
      const timer = setTimeout(() => finish(undefined), this.opts.timeoutMs);
      const finish = (answer: Buffer | undefined) => {
        clearTimeout(timer);
        conn.destroy();
        resolve(answer);
      };
      conn.on('error', () => finish(undefined));
      conn.on('connect', () => {
        const frame = Buffer.alloc(2 + msg.length);
        frame.writeUInt16BE(msg.length);
        msg.copy(frame, 2);
        frame.writeUInt16BE(id, 2);
        conn.write(frame);
      });
      conn.on('data', (chunk) => {
        buffered = Buffer.concat([buffered, chunk]);
        if (buffered.length > 2 + MAX_TCP_MESSAGE) return finish(undefined);
        if (buffered.length >= 2 && buffered.length >= 2 + buffered.readUInt16BE(0)) {
          const answer = buffered.subarray(2, 2 + buffered.readUInt16BE(0));
          finish(answer.length >= 2 && answer.readUInt16BE(0) === id ? answer : undefined);
        }
      });
    });
  }
}

/** "host|port": one key per resolver (hosts as the proxy was given them; the API stores them normalised). */
function upstreamKey(u: Upstream): string {
  return `${u.host}|${u.port}`;
}

export function normaliseName(name: string): string {
  const lower = name.toLowerCase();
  return lower.endsWith('.') ? lower.slice(0, -1) : lower;
}

/** Follows CNAMEs from `qname`: every name of the chain, the A/AAAA bytes at its end, and the smallest TTL on the way. */
export function resolveChain(
  qname: string,
  answers: dnsPacket.Answer[],
): { names: string[]; addresses: number[][]; ttl: number } {
  const names = [qname];
  let ttl = Number.POSITIVE_INFINITY;
  let current = qname;
  for (let hops = 0; hops < 16; hops++) {
    const cname = answers.find((a) => a.type === 'CNAME' && normaliseName(a.name) === current) as
      | { ttl?: number; data: unknown }
      | undefined;
    if (!cname) break;
    ttl = Math.min(ttl, cname.ttl ?? 0);
    current = normaliseName(String(cname.data));
    if (names.includes(current)) break;
    names.push(current);
  }
  const addresses: number[][] = [];
  for (const a of answers) {
    if ((a.type !== 'A' && a.type !== 'AAAA') || !names.includes(normaliseName(a.name))) continue;
    try {
      const data = String((a as { data: unknown }).data);
      addresses.push(a.type === 'A' ? data.split('.').map(Number) : ipaddr.parse(data).toByteArray());
      ttl = Math.min(ttl, (a as { ttl?: number }).ttl ?? 0);
    } catch {}
  }
  return { names, addresses, ttl: Number.isFinite(ttl) ? ttl : 0 };
}

/**
 * Lowers every answer-section TTL of a wire-format DNS message above `max`
 * to `max`, in place. A message it cannot walk is left alone (it was
 * decoded already; the addresses came from the decoded answers).
 */
export function capAnswerTtls(msg: Buffer, max: number): void {
  if (msg.length < 12) return;
  const questions = msg.readUInt16BE(4);
  const answers = msg.readUInt16BE(6);
  let o = 12;
  const skipName = (): boolean => {
    while (o < msg.length) {
      const len = msg[o]!;
      if (len === 0) {
        o += 1;
        return true;
      }
      if ((len & 0xc0) === 0xc0) {
        o += 2; // a compression pointer ends the name
        return true;
      }
      o += 1 + len;
    }
    return false;
  };
  for (let i = 0; i < questions; i++) {
    if (!skipName()) return;
    o += 4;
  }
  for (let i = 0; i < answers; i++) {
    if (!skipName() || o + 10 > msg.length) return;
    if (msg.readUInt32BE(o + 4) > max) msg.writeUInt32BE(max, o + 4);
    o += 10 + msg.readUInt16BE(o + 8);
  }
}

/**
 * dns listed: the query as it goes upstream, rebuilt from what was judged:
 * the decoded question (the name as the rules matched it: a label with a
 * dot in it, which the decoder joins, goes out as two labels, so the name
 * forwarded is the name judged), recursion desired and checking disabled
 * as asked, and of EDNS only the payload size and the DO bit. Nothing else
 * the client put in its message (answer, authority or additional records,
 * EDNS options, other flags) goes upstream.
 */
function questionOnly(query: dnsPacket.Packet, question: dnsPacket.Question): Buffer {
  const opt = (query.additionals ?? []).find((a) => a.type === 'OPT') as
    | { udpPayloadSize?: number; flags?: number }
    | undefined;
  return dnsPacket.encode({
    type: 'query',
    id: query.id ?? 0,
    flags: (query.flags ?? 0) & (dnsPacket.RECURSION_DESIRED | dnsPacket.CHECKING_DISABLED),
    questions: [{ name: question.name, type: question.type, class: question.class ?? 'IN' }],
    ...(opt
      ? {
          additionals: [
            {
              type: 'OPT',
              name: '.',
              udpPayloadSize: Math.max(512, opt.udpPayloadSize ?? 512),
              extendedRcode: 0,
              ednsVersion: 0,
              flags: (opt.flags ?? 0) & dnsPacket.DNSSEC_OK,
              flag_do: ((opt.flags ?? 0) & dnsPacket.DNSSEC_OK) !== 0,
              options: [],
            },
          ],
        }
      : {}),
  });
}

type Transport = 'udp' | 'tcp';
type Family = 'ipv4' | 'ipv6';

/**
 * An answer the proxy makes itself: the question, no records, `rcode`. With
 * `blocked` and a query that had EDNS, an OPT record with an Extended DNS
 * Error "Blocked" and that text (no OPT without EDNS in the query: RFC 6891).
 */
function errorReply(query: dnsPacket.Packet, rcode: number, blocked?: string): Buffer {
  const rd = (query.flags ?? 0) & dnsPacket.RECURSION_DESIRED;
  const edns = blocked !== undefined && (query.additionals ?? []).some((a) => a.type === 'OPT');
  return dnsPacket.encode({
    type: 'response',
    id: query.id ?? 0,
    flags: rd | dnsPacket.RECURSION_AVAILABLE | rcode,
    questions: query.questions ?? [],
    ...(edns ? { additionals: [blockedOpt(blocked)] } : {}),
  });
}

/** An OPT record with an Extended DNS Error "Blocked" and `text`. */
function blockedOpt(text: string): dnsPacket.Answer {
  const data = Buffer.alloc(2 + Buffer.byteLength(text));
  data.writeUInt16BE(EDE_BLOCKED);
  data.write(text, 2);
  // dns-packet's types name only a few option codes; it encodes any code given with `data`.
  return {
    type: 'OPT',
    name: '.',
    udpPayloadSize: 1232,
    extendedRcode: 0,
    ednsVersion: 0,
    flags: 0,
    flag_do: false,
    options: [{ code: EDE_OPTION, data }],
  } as unknown as dnsPacket.Answer;
}
