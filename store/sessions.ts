/**
 * Dashboard sessions (api/session.ts decides what they mean): one hash per
 * session, named by the sha256 of its id, so that what Redis holds cannot be
 * presented as a cookie. Its TTL is the idle limit; every read renews it.
 * The absolute limit is `expiresAt`, which the API checks. Every API process
 * reads the same sessions, and a DELETE ends one for all of them.
 */
import type { Connection } from './connection.js';
import { keys } from './keys.js';

export interface SessionRecord {
  kind: 'admin' | 'tenant';
  /** The tenant key's id ('' for the admin): the session lives only as long as the key. */
  keyId: string;
  /** The key's tenant ('' for the admin). */
  tenant: string;
  /** A fingerprint of the admin key it was made with ('' for a tenant): a new admin key ends the old one's sessions. */
  admin: string;
  /** The token that state-changing requests of this session carry in X-CSRF-Token. */
  csrf: string;
  /** Made over TLS: its cookie is Secure (and named `__Host-…`). */
  secure: boolean;
  /** Milliseconds since the epoch. */
  createdAt: number;
  /** The absolute end, ms since the epoch. */
  expiresAt: number;
}

/** Whether a session lives (its hash exists: its TTL has not run out and nobody deleted it). */
export async function sessionExists(conn: Connection, idHash: string): Promise<boolean> {
  return (await conn.redis.exists(keys.uiSession(idHash))) === 1;
}

function toRecord(h: Record<string, string>): SessionRecord | undefined {
  const kind = h['kind'];
  if (kind !== 'admin' && kind !== 'tenant') return undefined;
  return {
    kind,
    keyId: h['key_id'] ?? '',
    tenant: h['tenant'] ?? '',
    admin: h['admin'] ?? '',
    csrf: h['csrf'] ?? '',
    secure: h['secure'] === '1',
    createdAt: Number(h['created_at'] ?? 0),
    expiresAt: Number(h['expires_at'] ?? 0),
  };
}

export class Sessions {
  constructor(private readonly conn: Connection) {}

  /** Stores a new session, to live `ttlMs` unless read again. */
  async put(idHash: string, r: SessionRecord, ttlMs: number): Promise<void> {
    const key = keys.uiSession(idHash);
    await this.conn.guard(() =>
      this.conn.redis
        .multi()
        .hset(key, {
          kind: r.kind,
          key_id: r.keyId,
          tenant: r.tenant,
          admin: r.admin,
          csrf: r.csrf,
          secure: r.secure ? '1' : '0',
          created_at: String(r.createdAt),
          expires_at: String(r.expiresAt),
        })
        .pexpire(key, Math.max(1, Math.round(ttlMs)))
        .exec(),
    );
  }

  /**
   * The session, its idle TTL renewed to `ttlMs` (one round trip); undefined
   * when there is none (never made, signed out, or idle too long).
   */
  async touch(idHash: string, ttlMs: number): Promise<SessionRecord | undefined> {
    const key = keys.uiSession(idHash);
    const replies = await this.conn.guard(() =>
      this.conn.redis
        .multi()
        .hgetall(key)
        .pexpire(key, Math.max(1, Math.round(ttlMs)))
        .exec(),
    );
    const [err, h] = replies?.[0] ?? [null, {}];
    if (err) throw err;
    return toRecord(h as Record<string, string>);
  }

  async delete(idHash: string): Promise<void> {
    await this.conn.guard(() => this.conn.redis.del(keys.uiSession(idHash)));
  }
}
