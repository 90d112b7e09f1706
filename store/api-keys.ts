/**
 * Tenant API keys as stored (a hash per key, only the key's sha256), and
 * the notice of a revocation that every API process follows.
 */
import type { Connection } from './connection.js';
import { channels, keys } from './keys.js';

export interface ApiKeyRecord {
  id: string;
  tenant: string;
  /** The cgroup subtree (relative to the mount) the key's computers must lie below; '' for a key made before prefixes. */
  cgroupPrefix: string;
  name: string | null;
  createdAt: string;
  /** sha256 hex of the whole key. */
  hash: string;
}

function toApiKey(id: string, h: Record<string, string>): ApiKeyRecord | undefined {
  if (h['hash'] === undefined) return undefined;
  return {
    id,
    hash: h['hash'],
    tenant: h['tenant'] ?? '',
    cgroupPrefix: h['cgroup_prefix'] ?? '',
    name: h['name'] ? h['name'] : null,
    createdAt: h['created_at'] ?? '',
  };
}

export class ApiKeys {
  /** Told the id of each revoked key; undefined after the subscriber reconnects (notices may be lost). */
  private readonly revocationListeners = new Set<(keyId?: string) => void>();

  constructor(private readonly conn: Connection) {}

  /** Calls `listener` on each revocation (see Store.onKeyRevoked); returns the function that removes it. */
  onRevoked(listener: (keyId?: string) => void): () => void {
    this.revocationListeners.add(listener);
    return () => this.revocationListeners.delete(listener);
  }

  /** A message of the `keyRevoked` channel (the key's id), or undefined when notices may have been lost. */
  notice(keyId?: string): void {
    for (const listener of this.revocationListeners) listener(keyId);
  }

  async put(record: ApiKeyRecord): Promise<void> {
    await this.conn.write(
      {
        what: `the creation of API key ${record.id}`,
        advice:
          'Its secret was not shown, so it is of no use: revoke it with ' +
          `DELETE /api/v1/keys/${record.id} once the store answers (404 means it was never stored), and create another.`,
      },
      (redis) =>
        redis
          .multi()
          .hset(keys.apiKey(record.id), {
            hash: record.hash,
            tenant: record.tenant,
            name: record.name ?? '',
            created_at: record.createdAt,
            cgroup_prefix: record.cgroupPrefix,
          })
          .zadd(keys.apiKeys(), 0, record.id)
          .exec(),
    );
  }

  async get(id: string): Promise<ApiKeyRecord | undefined> {
    const h = await this.conn.guard(() => this.conn.redis.hgetall(keys.apiKey(id)));
    return toApiKey(id, h);
  }

  async list(): Promise<ApiKeyRecord[]> {
    const redis = this.conn.redis;
    const ids = await this.conn.guard(() => redis.zrange(keys.apiKeys(), 0, -1));
    const hashes = await this.conn.guard(() => Promise.all(ids.map((id) => redis.hgetall(keys.apiKey(id)))));
    return hashes.flatMap((h, i) => toApiKey(ids[i] ?? '', h) ?? []);
  }

  /** Removes a key, and tells every API process (the `keyRevoked` channel); false if there was none. */
  async delete(id: string): Promise<boolean> {
    const r = await this.conn.write(
      {
        what: `the revocation of API key ${id}`,
        advice:
          'GET /api/v1/keys once the store answers to see whether it is still listed. ' +
          'Repeating the DELETE is safe (404 key_not_found then means it is revoked).',
      },
      (redis) =>
        redis.multi().del(keys.apiKey(id)).zrem(keys.apiKeys(), id).publish(channels.keyRevoked, id).exec(),
    );
    return r?.[0]?.[1] === 1;
  }
}
