/**
 * What a computer's DNS lookups taught the agent (hostname → address, until
 * when): a hash per computer that the agent writes and the API reads.
 */
import type { Scope } from './computers.js';
import type { Connection } from './connection.js';
import { keys } from './keys.js';

export interface LearnedName {
  name: string;
  address: string;
  /** Milliseconds since the epoch. */
  expiresAt: number;
}

export class Learned {
  constructor(private readonly conn: Connection) {}

  /**
   * Records names the computer learned, if it exists (as Events.append: the
   * agent publishes within half a second, which may be after a DELETE);
   * expired fields are dropped as new ones come, and the key itself expires
   * with its last field.
   */
  async put(id: string, entries: LearnedName[]): Promise<void> {
    if (entries.length === 0) return;
    const fields: string[] = [];
    for (const e of entries) fields.push(`${e.name} ${e.address}`, String(e.expiresAt));
    await this.conn.run('putLearned', [keys.computer(id), keys.learned(id)], [String(Date.now()), ...fields]);
  }

  /** Unexpired learned names of a computer visible under `scope`, sorted; undefined when the computer is not. */
  async get(id: string, scope: Scope): Promise<LearnedName[] | undefined> {
    const redis = this.conn.redis;
    const [tenant, fields] = await this.conn.guard(() =>
      Promise.all([redis.hget(keys.computer(id), 'tenant'), redis.hgetall(keys.learned(id))]),
    );
    if (tenant === null || (scope !== '' && tenant !== scope)) return undefined;
    const now = Date.now();
    return Object.entries(fields)
      .map(([field, at]) => {
        const space = field.indexOf(' ');
        return { name: field.slice(0, space), address: field.slice(space + 1), expiresAt: Number(at) };
      })
      .filter((e) => e.expiresAt > now)
      .sort((a, b) => a.name.localeCompare(b.name) || a.address.localeCompare(b.address));
  }
}
