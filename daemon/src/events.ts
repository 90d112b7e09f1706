/**
 * Deny events: the kernel writes one to the "deny_events" ring buffer for
 * every refused connect, sendmsg or socket creation; the agent reads them
 * (every 100 ms), names the computer and, where the computer's DNS lookups
 * taught it the address, the hostname, rate-limits per computer (counting
 * what it drops) and hands them to its sinks (the JSON log, Redis).
 */
import ipaddr from 'ipaddr.js';
import { decodeDenyEvent, REASON } from './bpf/abi.js';
import * as bpf from './bpf/libbpf.js';
import type { Enforcer } from './enforcer.js';
import type { AgentMetrics } from './metrics.js';

export interface DenyRecord {
  computer: string;
  at: string;
  pid: number;
  comm: string;
  family: 'ipv4' | 'ipv6' | null;
  protocol: 'tcp' | 'udp' | 'icmp' | 'raw' | string;
  address: string | null;
  port: number | null;
  hostname: string | null;
  reason: 'mode' | 'rule' | 'socket' | 'dns' | 'proxy_port' | 'ungoverned';
}

export interface DenyEventsOptions {
  enforcer: Enforcer;
  /** Events per second a computer may log; bursts up to `burst`. @default 20 and 100 */
  ratePerSecond?: number;
  burst?: number;
  sink: (record: DenyRecord) => void;
  metrics?: AgentMetrics;
}

const REASON_NAMES = Object.fromEntries(Object.entries(REASON).map(([k, v]) => [v, k])) as Record<
  number,
  string
>;
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

  private onEvent(data: Buffer): void {
    const e = decodeDenyEvent(data);
    const computer = this.opts.enforcer.computerAt(e.cgroupId) ?? `cgroup:${e.cgroupId}`;
    const reason = (
      REASON_NAMES[e.reason] === 'proxyPort' ? 'proxy_port' : REASON_NAMES[e.reason]
    ) as DenyRecord['reason'];
    this.opts.metrics?.denials.inc({ computer, reason });
    if (!this.take(computer)) {
      this.dropped.set(computer, (this.dropped.get(computer) ?? 0) + 1);
      this.opts.metrics?.eventsDropped.inc({ computer });
      return;
    }
    this.delivered.set(computer, (this.delivered.get(computer) ?? 0) + 1);
    const address = e.address.length === 0 ? null : formatAddress(e.address);
    this.opts.sink({
      computer,
      at: new Date(this.clockOffsetMs + Number(e.timeNs / 1_000_000n)).toISOString(),
      pid: e.pid,
      comm: e.comm,
      family: e.address.length === 4 ? 'ipv4' : e.address.length === 16 ? 'ipv6' : null,
      protocol: PROTOCOL_NAMES[e.protocol] ?? String(e.protocol),
      address,
      port: e.address.length === 0 ? null : e.port,
      hostname: e.address.length === 0 ? null : (this.opts.enforcer.nameOf(computer, e.address) ?? null),
      reason: (REASON_NAMES[e.reason] === 'proxyPort'
        ? 'proxy_port'
        : REASON_NAMES[e.reason]) as DenyRecord['reason'],
    });
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

function formatAddress(bytes: number[]): string {
  return ipaddr.fromByteArray(bytes).toString();
}
