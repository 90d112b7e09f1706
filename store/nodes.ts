/**
 * What each node's agent says of itself (daemon/agent/node-status.ts): its
 * kernel and which kernel-dependent features it runs, refreshed every
 * NODE_STATUS_INTERVAL_MS and gone NODE_STATUS_TTL_MS after the agent stops
 * saying it (the key's TTL). "egressd:nodes" orders the nodes by when they
 * last spoke; a node whose status expired is dropped from it when read.
 */
import type { Connection } from './connection.js';
import { keys } from './keys.js';

export const NODE_STATUS_INTERVAL_MS = 15_000;
export const NODE_STATUS_TTL_MS = 60_000;

/** A kernel-dependent feature on one node: on, off (the operator's choice), or unsupported (why, in `problem`). */
export interface FeatureState {
  state: 'on' | 'off' | 'unsupported';
  problem?: string;
}

/**
 * Which store the node's agent follows (daemon/agent/store-identity.ts):
 * `following` the store of id `id`; `lost`: it remembers `id`, the store has
 * `found` ('' for none) and no operator accepted it, so the agent keeps what
 * it enforces and follows nothing (POST /api/v1/store/accept ends it).
 */
export interface NodeStoreState {
  state: 'following' | 'lost';
  id: string;
  found?: string;
  /** lost: since when (ms since the epoch). */
  since?: number;
}

export interface NodeStatus {
  node: string;
  /** uname -r of the node. */
  kernel: string;
  /** The egressd build's version (package.json). */
  version: string;
  /** Milliseconds since the epoch. */
  startedAt: number;
  seenAt: number;
  features: Record<string, FeatureState>;
  /** Absent: an agent from before store identities, or one that has not checked the store yet. */
  store?: NodeStoreState;
}

export class Nodes {
  constructor(private readonly conn: Connection) {}

  async put(status: NodeStatus): Promise<void> {
    const key = keys.nodeStatus(status.node);
    await this.conn.redis
      .multi()
      .hset(key, {
        kernel: status.kernel,
        version: status.version,
        started_at: String(status.startedAt),
        seen_at: String(status.seenAt),
        features: JSON.stringify(status.features),
        store: status.store ? JSON.stringify(status.store) : '',
      })
      .pexpire(key, NODE_STATUS_TTL_MS)
      .zadd(keys.nodes(), status.seenAt, status.node)
      .exec();
  }

  /** Every node that spoke within NODE_STATUS_TTL_MS, by name (Redis away: StoreUnavailableError). */
  list(): Promise<NodeStatus[]> {
    return this.conn.guard(() => this.read());
  }

  private async read(): Promise<NodeStatus[]> {
    const names = await this.conn.redis.zrange(keys.nodes(), 0, -1);
    const out: NodeStatus[] = [];
    const gone: string[] = [];
    for (const node of names) {
      const h = await this.conn.redis.hgetall(keys.nodeStatus(node));
      if (!h['seen_at']) {
        gone.push(node);
        continue;
      }
      let features: Record<string, FeatureState> = {};
      let store: NodeStoreState | undefined;
      try {
        features = JSON.parse(h['features'] ?? '{}') as Record<string, FeatureState>;
        if (h['store']) store = JSON.parse(h['store']) as NodeStoreState;
      } catch {
        // An unreadable status still says the node is there.
      }
      out.push({
        node,
        kernel: h['kernel'] ?? '',
        version: h['version'] ?? '',
        startedAt: Number(h['started_at'] ?? 0),
        seenAt: Number(h['seen_at']),
        features,
        ...(store ? { store } : {}),
      });
    }
    if (gone.length > 0) await this.conn.redis.zrem(keys.nodes(), ...gone);
    return out.sort((a, b) => (a.node < b.node ? -1 : a.node > b.node ? 1 : 0));
  }
}
