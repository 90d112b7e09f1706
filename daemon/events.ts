/**
 * Deny events: the kernel writes one to the "deny_events" ring buffer for
 * every refused connect, sendmsg or socket creation; the agent reads them
 * (every 100 ms), names the computer and, where the computer's DNS lookups
 * taught it the address, the hostname, rate-limits per computer (counting
 * what it drops) and hands them to its sinks (the JSON log, Redis).
 * Refusals made in user space (the DNS proxy's) come in through submit()
 * and take the same way: one rate limit per computer, one sink.
 */
import ipaddr from 'ipaddr.js';
import { REASON } from './kernel/abi.js';
import type { Enforcer } from './kernel/enforcer.js';
import * as bpf from './kernel/libbpf.js';
import { decodeDenyEvent } from './kernel/records.js';
import type { AgentMetrics } from './metrics.js';

export interface DenyRecord {
  computer: string;
  at: string;
  /** null for a refusal of the DNS proxy: it does not know the process. */
  pid: number | null;
  comm: string | null;
  family: 'ipv4' | 'ipv6' | null;
  protocol: 'tcp' | 'udp' | 'icmp' | 'raw' | string;
  address: string | null;
  port: number | null;
  /** The name the address was learned for; for the DNS proxy's refusals, the name asked. */
  hostname: string | null;
  reason: KernelReason | UserReason;
  /** The computer's policy is in audit: this was let through (it would have been refused). */
  audit: boolean;
  /** name_mismatch: the server name the connection's first bytes gave ('' when they gave none). */
  name?: string;
}

/**
 * Reasons of the kernel's events (EGRESS_REASON_*): REASON's names in
 * snake_case. `name_mismatch`: a connection's first bytes named a server
 * (TLS server_name, HTTP Host) that its name-bound address was not learned
 * for; `quic`: UDP to port 443 of such an address.
 */
export type KernelReason =
  | 'mode'
  | 'rule'
  | 'socket'
  | 'dns'
  | 'proxy_port'
  | 'ungoverned'
  | 'name_mismatch'
  | 'quic';

/**
 * Reasons of user space's refusals: the DNS proxy answered a name itself,
 * NXDOMAIN, because the policy's hostname rules do not cover it
 * (`dns_unlisted`, dns listed) or because it resolves nothing (`dns_refused`,
 * dns none); a policy change closed a connection that it no longer allows
 * (`revoked`, live revocation: see revoked()).
 */
export type UserReason = 'dns_unlisted' | 'dns_refused' | 'revoked';

/** A refusal made in user space, as submit() takes it. */
export interface UserDenial {
  computer: string;
  reason: UserReason;
  /** The name asked. */
  hostname: string;
  /** The query's address family and transport. */
  family: 'ipv4' | 'ipv6';
  protocol: 'udp' | 'tcp';
  /** In audit: answered as upstream answered, not refused. @default false */
  audit?: boolean;
}

/** A connection closed by live revocation (daemon/kernel/revoker.ts), as revoked() takes it. */
export interface RevokedSocket {
  /** The peer: 4 bytes for IPv4, 16 for IPv6. */
  address: number[];
  port: number;
  protocol: number;
}

export interface DenyEventsOptions {
  enforcer: Enforcer;
  /** Events per second a computer may log; bursts up to `burst`. @default 20 and 100 */
  ratePerSecond?: number;
  burst?: number;
  sink: (record: DenyRecord) => void;
  metrics?: AgentMetrics;
}

/** REASON's codes → their names as events carry them: proxyPort → proxy_port, nameMismatch → name_mismatch. */
const REASON_NAMES = Object.fromEntries(
  Object.entries(REASON).map(([k, v]) => [v, k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)]),
) as Record<number, KernelReason>;
const PROTOCOL_NAMES: Record<number, string> = {
  1: 'icmp',
  6: 'tcp',
  17: 'udp',
  58: 'icmpv6',
  132: 'sctp',
  255: 'raw',
};

export class DenyEvents {
  /** Events dropped by the rate limit, per computer. */
  readonly dropped = new Map<string, number>();
  readonly delivered = new Map<string, number>();
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  private readonly ring: ReturnType<typeof bpf.openRingBuffer>;
  private readonly timer: NodeJS.Timeout;
  /** CLOCK_MONOTONIC ns → wall clock: the kernel stamps events with the former. */
  private readonly clockOffsetMs = Date.now() - Number(process.hrtime.bigint() / 1_000_000n);

  constructor(private readonly opts: DenyEventsOptions) {
    this.ring = bpf.openRingBuffer(opts.enforcer.mapFd('deny_events'), (data) => this.onEvent(data));
    this.timer = setInterval(() => this.poll(), 100).unref();
  }

  /** Reads what the kernel wrote so far (also called by the timer). */
  poll(): number {
    return this.ring.consume();
  }

  close(): void {
    clearInterval(this.timer);
    this.ring.close();
  }

  /**
   * A refusal that user space made (the DNS proxy's): rate-limited with the
   * computer's kernel events, to the same sink. Cheap and synchronous, so
   * the refusing answer never waits for it.
   */
  submit(denial: UserDenial): void {
    this.deliver(denial.computer, denial.reason, denial.audit === true, () => ({
      computer: denial.computer,
      at: new Date().toISOString(),
      pid: null,
      comm: null,
      family: denial.family,
      protocol: denial.protocol,
      address: null,
      port: 53,
      hostname: denial.hostname,
      reason: denial.reason,
      audit: denial.audit === true,
    }));
  }

  /**
   * A connection that a policy change closed: an event with reason
   * `revoked`, the peer, and the name the address was learned for. The
   * kernel does not keep which process made a socket: no pid.
   */
  revoked(computer: string, socket: RevokedSocket): void {
    this.deliver(computer, 'revoked', false, () => ({
      computer,
      at: new Date().toISOString(),
      pid: null,
      comm: null,
      family: socket.address.length === 4 ? 'ipv4' : 'ipv6',
      protocol: PROTOCOL_NAMES[socket.protocol] ?? String(socket.protocol),
      address: formatAddress(socket.address),
      port: socket.port,
      hostname: this.opts.enforcer.nameOf(computer, socket.address) ?? null,
      reason: 'revoked',
      audit: false,
    }));
  }

  private onEvent(data: Buffer): void {
    const e = decodeDenyEvent(data);
    const computer = this.opts.enforcer.computerAt(e.cgroupId) ?? `cgroup:${e.cgroupId}`;
    const reason = REASON_NAMES[e.reason] as KernelReason;
    this.deliver(computer, reason, e.audit, () => {
      const address = e.address.length === 0 ? null : formatAddress(e.address);
      return {
        computer,
        at: new Date(this.clockOffsetMs + Number(e.timeNs / 1_000_000n)).toISOString(),
        pid: e.pid,
        comm: e.comm,
        family: e.address.length === 4 ? 'ipv4' : e.address.length === 16 ? 'ipv6' : null,
        protocol: PROTOCOL_NAMES[e.protocol] ?? String(e.protocol),
        address,
        port: e.address.length === 0 ? null : e.port,
        hostname: e.address.length === 0 ? null : (this.opts.enforcer.nameOf(computer, e.address) ?? null),
        reason,
        audit: e.audit,
        ...(e.name !== undefined ? { name: e.name } : {}),
      };
    });
  }

  /** The one way to the sink: counted, rate-limited per computer; `record` is built only when it passes. */
  private deliver(
    computer: string,
    reason: DenyRecord['reason'],
    audit: boolean,
    record: () => DenyRecord,
  ): void {
    this.opts.metrics?.denials.inc({ computer, reason, audit: String(audit) });
    if (!this.take(computer)) {
      this.dropped.set(computer, (this.dropped.get(computer) ?? 0) + 1);
      this.opts.metrics?.eventsDropped.inc({ computer });
      return;
    }
    this.delivered.set(computer, (this.delivered.get(computer) ?? 0) + 1);
    this.opts.sink(record());
  }

  /** Token bucket per computer. */
  private take(computer: string): boolean {
    const rate = this.opts.ratePerSecond ?? 20;
    const burst = this.opts.burst ?? 100;
    const now = Date.now();
    const b = this.buckets.get(computer) ?? { tokens: burst, at: now };
    b.tokens = Math.min(burst, b.tokens + ((now - b.at) / 1000) * rate);
    b.at = now;
    this.buckets.set(computer, b);
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }
}

/** An address's text form (IPv4 dotted, IPv6 RFC 5952) from its bytes. */
export function formatAddress(bytes: number[]): string {
  return ipaddr.fromByteArray(bytes).toString();
}
