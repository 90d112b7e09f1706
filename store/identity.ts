/**
 * The store's identity: which Redis data set this is. A Redis that comes
 * back empty (no persistence, a replacement, a FLUSHALL) has lost its
 * identity with everything else; agents compare the id with the one they
 * remember (daemon/agent/store-identity.ts) and keep what they enforce
 * rather than follow an empty store.
 *
 * - The key (keys.storeIdentity) is made when missing, atomically (one
 *   script: two makers agree on one id), by the API at start and after each
 *   reconnect, and by an agent that never followed a store.
 * - `replaces`: the ids of lost stores that an operator accepted this one
 *   for (POST /api/v1/store/accept); an agent that remembers one of them
 *   follows this store from then on. Added to, never removed.
 * - A failover to a replica keeps the id (the key is replicated like the
 *   rest), so agents keep their version memory there (versions.ts).
 */
import { randomBytes } from 'node:crypto';
import type { Connection } from './connection.js';
import { keys } from './keys.js';

export interface StoreIdentity {
  /** 32 hex digits, random. */
  id: string;
  /** Milliseconds since the epoch. */
  createdAt: number;
  /** Ids of lost stores this one replaces (an operator accepted it), oldest first. */
  replaces: string[];
}

/** The form of an id: what the API accepts as a lost store's id. */
export const STORE_ID = /^[0-9a-f]{32}$/;

function parse(reply: unknown): StoreIdentity | undefined {
  const [id, createdAt, replaces] = (reply ?? []) as (string | null)[];
  if (!id) return undefined;
  return { id, createdAt: Number(createdAt ?? 0), replaces: replaces ? replaces.split(' ') : [] };
}

export class Identities {
  constructor(private readonly conn: Connection) {}

  /** The store's identity, undefined when it has none (a new or an emptied Redis). */
  async get(): Promise<StoreIdentity | undefined> {
    return parse(
      await this.conn.guard(() =>
        this.conn.redis.hmget(keys.storeIdentity(), 'id', 'created_at', 'replaces'),
      ),
    );
  }

  /**
   * The identity, made now when missing; with `lost`, these ids are recorded
   * as replaced by this store. A change like any other the API acknowledges
   * (replicated first with --redis-min-replicas).
   */
  async ensure(lost: readonly string[] = []): Promise<StoreIdentity> {
    const made = await this.conn.run(
      'ensureIdentity',
      [keys.storeIdentity()],
      [randomBytes(16).toString('hex'), String(Date.now()), ...lost],
      {
        what: lost.length > 0 ? 'the acceptance of this store' : "the store's identity",
        advice: 'GET /api/v1/store tells whether it was made; repeating it is safe',
      },
    );
    const identity = parse(made);
    if (!identity) throw new Error('the store identity script answered no id');
    return identity;
  }
}
