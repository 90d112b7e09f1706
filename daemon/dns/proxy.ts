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
 * - audit (any of them): the same deny events, marked audit, but every query
 *   forwarded as under `all` (learning as ever; denylist names not NXDOMAIN).
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
 * A CNAME chain counts as listed when any name in it is. Loopback,
 * unspecified, link-local or this host's addresses: never learned (rebinding).
 * Every forwarded answer loses the `ech` param of its HTTPS and SVCB records
 * (svcb.ts): TLS clients must send the server name the kernel checks.
 *
 * Upstream: `upstreams` (the agent's --dns-upstream), asked in order, the
 * next when one does not answer in time, cannot be reached, or answers
 * SERVFAIL, NOTIMP or REFUSED (upstream.ts); or the computer's own alone
 * (`ensure(id, port, { upstream })`: its `dns_upstream`, such as a cluster
 * DNS, no fallback). Everything above is the same whichever answers. An
 * upstream of a computer's own no computer uses any more is closed (a query
 * still waiting on it is answered SERVFAIL).
 */

import { randomInt } from 'node:crypto';
import type dgram from 'node:dgram';
import type net from 'node:net';
import os from 'node:os';
import dnsPacket from 'dns-packet';
import ipaddr from 'ipaddr.js';
import type { Logger } from 'pino';
import { EgressdError } from '../../policy/errors.js';
import type { UserDenial } from '../events.js';
import type { Enforcer } from '../kernel/enforcer.js';
import type { AgentMetrics } from '../metrics.js';
import { type Family, listenDns, type Transport } from './listen.js';
import { stripEch } from './svcb.js';
import { type Upstream, UpstreamClient, upstreamKey } from './upstream.js';
import {
  capAnswerTtls,
  errorReply,
  LISTED_TYPES,
  normaliseName,
  questionOnly,
  RCODE,
  resolveChain,
} from './wire.js';

export type { Upstream } from './upstream.js';

export interface DnsProxyOptions {
  enforcer: Enforcer;
  /** Asked in order (see upstream.ts). */
  upstreams: Upstream[];
  /** Addresses to listen on, per computer port: loopback for the host namespace, plus addresses reachable from sandboxes' own namespaces. */
  listen: string[];
  /** Ports the proxy may give computers, inclusive. */
  portRange: [number, number];
  /** TTL clamp for learned addresses, seconds. */
  ttlFloor: number;
  ttlCeiling: number;
  /** Each upstream's answer deadline. */
  timeoutMs: number;
  log: Logger;
  metrics?: AgentMetrics;
  /** Told of every learned name after its map write (the agent publishes them). */
  onLearned?: (id: string, name: string, addresses: number[][], ttlSeconds: number) => void;
  /** Told of every query the policy's `dns` refused (the agent's deny events: DenyEvents.submit). */
  onDenied?: (denial: UserDenial) => void;
  /** Told of every answer's addresses, learned or not (the agent names its observations with them). */
  onResolved?: (id: string, name: string, addresses: number[][]) => void;
}

export interface DnsStats {
  queries: number;
  answered: number;
  nxdomain: number;
  /** Answers replaced by SERVFAIL because the map write failed or no upstream answered in time. */
  failClosed: number;
  /** Upstreams that failed a query before the next one was asked (see upstream.ts). */
  fallbacks: number;
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
  /** The computer's own resolver; undefined: the proxy's default (upstreams, in order). */
  upstream?: Upstream;
  udp: dgram.Socket[];
  tcp: net.Server[];
}

export class DnsProxy {
  readonly stats: DnsStats = {
    queries: 0,
    answered: 0,
    nxdomain: 0,
    failClosed: 0,
    fallbacks: 0,
    learned: 0,
    unlisted: 0,
    typeNotForwarded: 0,
    refused: 0,
  };
  private readonly computers = new Map<string, ComputerSockets>();
  private readonly usedPorts = new Set<number>();
  private readonly ownAddresses: Set<string>;
  private readonly upstream: UpstreamClient;
  private closed = false;

  constructor(private readonly opts: DnsProxyOptions) {
    if (opts.upstreams.length === 0) throw new Error('the DNS proxy needs at least one upstream resolver');
    this.upstream = new UpstreamClient({ timeoutMs: opts.timeoutMs, log: opts.log });
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
    if (this.opts.upstreams.some((u) => upstreamKey(u) === key)) return;
    for (const s of this.computers.values()) if (s.upstream && upstreamKey(s.upstream) === key) return;
    this.upstream.drop(upstream);
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
    this.upstream.close();
  }

  private async bind(id: string, port: number): Promise<ComputerSockets> {
    const sockets: ComputerSockets = { port, udp: [], tcp: [] };
    // Nothing goes out once the proxy is closed (a query may still be upstream).
    const handle = async (msg: Buffer, transport: Transport, family: Family) => {
      const reply = await this.handle(id, msg, transport, family);
      return this.closed ? undefined : reply;
    };
    try {
      for (const address of this.opts.listen) {
        const { udp, tcp } = await listenDns(address, port, handle, (err) =>
          this.opts.log.warn({ computer: id, err: err.message }, 'DNS proxy socket error'),
        );
        sockets.udp.push(udp);
        sockets.tcp.push(tcp);
      }
      return sockets;
    } catch (err) {
      for (const u of sockets.udp) u.close();
      for (const t of sockets.tcp) t.close();
      throw err;
    }
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
    const policy = this.opts.enforcer.dnsPolicyOf(id);
    if (policy === undefined) {
      // A port whose computer this process has not attached yet (an agent that just started):
      // nothing to go by, so nothing is forwarded; the client asks again.
      this.stats.failClosed++;
      return errorReply(query, RCODE.SERVFAIL);
    }
    const { mode, dns, audit } = policy;
    // The proxy's own NXDOMAIN for a name the policy does not resolve: a deny event, nothing
    // forwarded. In audit the event is marked so and the query is forwarded as under dns all.
    const refuse = (reason: 'dns_refused' | 'dns_unlisted', why: string) => {
      this.stats[reason === 'dns_refused' ? 'refused' : 'unlisted']++;
      this.opts.onDenied?.({ computer: id, reason, hostname: qname, family, protocol: transport, audit });
      return audit ? undefined : errorReply(query, RCODE.NXDOMAIN, `egressd: ${why}`);
    };
    let forwarded = msg;
    if (dns === 'none') {
      const refused = refuse('dns_refused', "this computer's policy resolves no names (dns none)");
      if (refused) return refused;
    } else if (dns === 'listed' && audit) {
      // Audit: reported as under enforcement, then forwarded whole (types and opcodes too).
      if (!this.opts.enforcer.listsName(id, [qname])) refuse('dns_unlisted', 'not listed');
    } else if (dns === 'listed') {
      if ((query as { opcode?: string }).opcode !== 'QUERY') {
        // NOTIFY, UPDATE, ...: not a question about a name; nothing to forward.
        this.stats.typeNotForwarded++;
        return errorReply(query, RCODE.NOTIMP);
      }
      if (!this.opts.enforcer.listsName(id, [qname])) {
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
    // The computer's own resolver alone, else the agent's in order.
    const own = this.computers.get(id)?.upstream;
    const { answer, fallbacks } = await this.upstream.ask(
      own ? [own] : this.opts.upstreams,
      forwarded,
      transport,
    );
    this.stats.fallbacks += fallbacks;
    if (!answer) {
      this.stats.failClosed++;
      this.opts.log.warn({ computer: id, name: qname }, 'no upstream answered in time: SERVFAIL');
      return errorReply(query, RCODE.SERVFAIL);
    }
    // No ECH: its encrypted ClientHello would hide the server name that the kernel judges a TLS
    // connection by (svcb.ts). What the computer gets is also what is learned from.
    const reply = stripEch(answer);
    let response: dnsPacket.Packet;
    try {
      if (!reply) throw new Error('an answer stripEch cannot walk');
      response = dnsPacket.decode(reply);
    } catch {
      this.stats.failClosed++;
      return errorReply(query, RCODE.SERVFAIL);
    }
    const rq = response.questions?.[0];
    if (!rq || normaliseName(rq.name) !== qname || rq.type !== question.type) {
      this.stats.failClosed++;
      return errorReply(query, RCODE.SERVFAIL);
    }
    const { names, addresses, ttl } = resolveChain(qname, response.answers ?? []);
    if (addresses.length > 0) this.opts.onResolved?.(id, qname, addresses);
    // No client may cache the answer longer than the kernel keeps its addresses.
    let ttlCap = this.opts.ttlCeiling;
    if (mode === 'allowlist' || mode === 'denylist') {
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
        if (mode === 'denylist' && !audit) {
          this.stats.nxdomain++;
          return errorReply(query, RCODE.NXDOMAIN);
        }
      }
    }
    this.stats.answered++;
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
}
