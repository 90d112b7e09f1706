/**
 * The agent's change feed: each node's stream of change records (appended by
 * the Lua scripts with every change), read on from a position, and the
 * node's full state for a resync when the agent starts or missed records.
 */
import type { Redis } from 'ioredis';
import type { DnsMode, Policy } from '../policy/types.js';
import type { Connection } from './connection.js';
import { keys, templates } from './keys.js';
import { storedPolicy } from './policies.js';

export type ChangeKind = 'policy' | 'computer' | 'computer-deleted';

/** One entry of a node's change stream (`keys.nodeChanges(node)`). */
export interface ChangeRecord {
  /** Stream entry id; read on from here. */
  streamId: string;
  computerId: string;
  kind: ChangeKind;
  version: number;
  cgroup: string;
  at: string;
  /** Per-node sequence number: consecutive unless records were trimmed before they were read. */
  seq: number;
}

/** A node's full state, for an agent's resync: follow the stream from `streamId`. */
export interface NodeSnapshot {
  streamId: string;
  /** `seq` of the record at streamId: the next record to read has seq + 1. */
  seq: number;
  computers: Array<{
    id: string;
    cgroup: string;
    tenant: string | null;
    dnsUpstream: string | null;
    policy: Policy & { dns: DnsMode; audit: boolean };
    version: number;
    updatedAt: string;
  }>;
}

/** Fields of each computer in NODE_SNAPSHOT's reply. */
const SNAPSHOT_FIELDS = 10;

function toChange(streamId: string, fields: string[]): ChangeRecord {
  const f: Record<string, string> = {};
  for (let i = 0; i + 1 < fields.length; i += 2) f[fields[i] ?? ''] = fields[i + 1] ?? '';
  return {
    streamId,
    computerId: f['computer_id'] ?? '',
    kind: (f['kind'] ?? 'policy') as ChangeKind,
    version: Number(f['version'] ?? 0),
    cgroup: f['cgroup'] ?? '',
    at: f['at'] ?? '',
    seq: Number(f['seq'] ?? 0),
  };
}

export class Changes {
  /** The connection of blocking reads (no command timeout), opened at the first one. */
  private blocking: Redis | undefined;

  constructor(private readonly conn: Connection) {}

  /** Every computer of a node with its policy and version, and the stream id to follow on from. */
  async snapshot(node: string): Promise<NodeSnapshot> {
    const r = (await this.conn.run(
      'nodeSnapshot',
      [keys.nodeComputers(node), keys.nodeChanges(node)],
      [templates.computer, templates.policy],
    )) as string[];
    const computers: NodeSnapshot['computers'] = [];
    for (let i = 2; i + SNAPSHOT_FIELDS <= r.length; i += SNAPSHOT_FIELDS) {
      const [
        id = '',
        cgroup = '',
        tenant = '',
        mode = 'unrestricted',
        rules = '[]',
        version = '0',
        updatedAt = '',
        dns = '',
        dnsUpstream = '',
        audit = '0',
      ] = r.slice(i, i + SNAPSHOT_FIELDS);
      computers.push({
        id,
        cgroup,
        tenant: tenant === '' ? null : tenant,
        dnsUpstream: dnsUpstream === '' ? null : dnsUpstream,
        policy: storedPolicy(mode, rules, dns, audit),
        version: Number(version),
        updatedAt,
      });
    }
    return { streamId: r[0] ?? '0-0', seq: Number(r[1] ?? 0), computers };
  }

  /**
   * Change records of a node after `fromId` (exclusive; '0-0' for all that
   * the stream still holds). With `blockMs`, waits that long for new ones
   * (on a connection of its own). An agent whose `fromId` is older than the
   * stream's first entry has missed records (MAXLEN trimming): it must
   * resync with a snapshot.
   */
  async read(
    node: string,
    fromId: string,
    options: { count?: number; blockMs?: number },
  ): Promise<ChangeRecord[]> {
    const count = options.count ?? 1000;
    const stream = keys.nodeChanges(node);
    let reply: [string, [string, string[]][]][] | null;
    if (options.blockMs !== undefined) {
      const blockMs = options.blockMs;
      if (!this.blocking) {
        this.blocking = this.conn.open({ commandTimeout: undefined, enableAutoPipelining: false });
        const opening = this.blocking;
        await this.conn.guard(() => opening.connect());
      }
      const client = this.blocking;
      reply = (await this.conn.guard(() =>
        client.xread('COUNT', count, 'BLOCK', blockMs, 'STREAMS', stream, fromId),
      )) as typeof reply;
    } else {
      reply = (await this.conn.guard(() =>
        this.conn.redis.xread('COUNT', count, 'STREAMS', stream, fromId),
      )) as typeof reply;
    }
    const entries = reply?.[0]?.[1] ?? [];
    return entries.map(([streamId, fields]) => toChange(streamId, fields));
  }

  /** The first id still in a node's stream ('0-0' if empty): older positions have been trimmed. */
  async firstId(node: string): Promise<string> {
    const r = await this.conn.guard(() =>
      this.conn.redis.xrange(keys.nodeChanges(node), '-', '+', 'COUNT', 1),
    );
    return r[0]?.[0] ?? '0-0';
  }

  close(): void {
    if (this.blocking && this.blocking.status !== 'end') this.blocking.disconnect();
  }
}
