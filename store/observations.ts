/**
 * What each computer connected to (audit mode's observations, issue 17): per
 * destination — the hostname when the computer's DNS named the address, else
 * the address — port and protocol, how often, and when first and last. The
 * agent merges what it saw into a hash per computer; the API reads it (the
 * suggested allowlist). At most MAX_OBSERVATIONS destinations a computer:
 * the least recently seen go first.
 */
import type { Scope } from './computers.js';
import type { Connection } from './connection.js';
import { keys } from './keys.js';

/** Destinations kept per computer in Redis. */
export const MAX_OBSERVATIONS = 1000;

export interface Observation {
  /** A hostname (lower case, no trailing dot), or an IPv4/IPv6 address. */
  host: string;
  port: number;
  protocol: 'tcp' | 'udp';
  count: number;
  /** Milliseconds since the epoch. */
  firstSeen: number;
  lastSeen: number;
}

export class Observations {
  constructor(private readonly conn: Connection) {}

  /** Merges what the agent saw, if the computer exists (a late write after a DELETE is dropped). */
  async put(id: string, seen: readonly Observation[]): Promise<void> {
    if (seen.length === 0) return;
    const args = [String(MAX_OBSERVATIONS)];
    for (const o of seen) {
      args.push(`${o.host} ${o.port} ${o.protocol}`, String(o.count), `${o.firstSeen} ${o.lastSeen}`);
    }
    await this.conn.run('putObserved', [keys.computer(id), keys.observed(id)], args);
  }

  /**
   * What the computer connected to, last seen at `since` or later (ms since
   * the epoch; 0: all), most recently seen first; undefined when the
   * computer is not visible under `scope`.
   */
  async get(id: string, scope: Scope, since = 0): Promise<Observation[] | undefined> {
    const redis = this.conn.redis;
    const [tenant, fields] = await this.conn.guard(() =>
      Promise.all([redis.hget(keys.computer(id), 'tenant'), redis.hgetall(keys.observed(id))]),
    );
    if (tenant === null || (scope !== '' && tenant !== scope)) return undefined;
    const out: Observation[] = [];
    for (const [field, value] of Object.entries(fields)) {
      const [host = '', port = '', protocol = ''] = field.split(' ');
      const [count = 0, firstSeen = 0, lastSeen = 0] = value.split(' ').map(Number);
      if (lastSeen < since || (protocol !== 'tcp' && protocol !== 'udp')) continue;
      out.push({ host, port: Number(port), protocol, count, firstSeen, lastSeen });
    }
    return out.sort((a, b) => b.lastSeen - a.lastSeen || a.host.localeCompare(b.host) || a.port - b.port);
  }
}
