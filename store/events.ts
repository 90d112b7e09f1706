/**
 * Computers' deny events: a capped stream per computer, written by the agent
 * and read by the API (a page here; live ones through event-feed.ts).
 */
import type { Scope } from './computers.js';
import type { Connection } from './connection.js';
import { keys } from './keys.js';

/** Approximate cap of each computer's deny event stream. */
const EVENTS_MAXLEN = '1000';

export class Events {
  constructor(private readonly conn: Connection) {}

  /**
   * Appends deny events (JSON-ready objects) to the computer's capped stream
   * (about the last 1,000), if the computer exists: the agent flushes what
   * it buffered, and a flush after the DELETE must not bring the stream back
   * for whoever registers the id next. (A flush that lands after the id was
   * registered again, within the agent's 250 ms batching, still does: the
   * script cannot tell one computer of an id from the next. Accepted: it takes
   * a delete and a register within the same fraction of a second.)
   */
  async append(id: string, events: object[]): Promise<void> {
    if (events.length === 0) return;
    await this.conn.run(
      'appendEvents',
      [keys.computer(id), keys.events(id)],
      [EVENTS_MAXLEN, ...events.map((e) => JSON.stringify(e))],
    );
  }

  /** The id of a computer's newest event ('0-0' when none): follow from here to see only new ones. */
  async cursor(id: string): Promise<string> {
    const last = await this.conn.guard(() =>
      this.conn.redis.xrevrange(keys.events(id), '+', '-', 'COUNT', 1),
    );
    return last[0]?.[0] ?? '0-0';
  }

  /** A computer's deny events, newest first, visible under `scope`; undefined when the computer is not. */
  async get(id: string, scope: Scope, limit: number, sinceMs: number): Promise<unknown[] | undefined> {
    const redis = this.conn.redis;
    const [tenant, entries] = await this.conn.guard(() =>
      Promise.all([
        redis.hget(keys.computer(id), 'tenant'),
        redis.xrevrange(keys.events(id), '+', sinceMs > 0 ? String(sinceMs) : '-', 'COUNT', limit),
      ]),
    );
    if (tenant === null || (scope !== '' && tenant !== scope)) return undefined;
    return entries.map(([, fields]) => JSON.parse(fields[1] ?? '{}'));
  }
}
