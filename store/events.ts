/**
 * Computers' deny events: a capped stream per computer, written by the agent
 * and read by the API (a page here; live ones through event-feed.ts).
 */
import type { Scope } from './computers.js';
import type { Connection } from './connection.js';
import { keys } from './keys.js';

/** Approximate cap of each computer's deny event stream. */
const EVENTS_MAXLEN = '1000';

/**
 * The most deny events `recentCounts` counts per computer: a count this high
 * reads "at least". Each computer costs an XRANGE of up to this many + 1
 * entries (whole entries: Redis has no count of a range of ids), so a page of
 * 1,000 computers all in a storm reads about 100,000 entries, not the
 * million that the stream's own cap would allow.
 */
export const RECENT_COUNT_CAP = 100;

/** How many deny events a computer had in a window, up to RECENT_COUNT_CAP. */
export interface RecentCount {
  count: number;
  /** More than `count` (which is then RECENT_COUNT_CAP): the count stopped there. */
  capped: boolean;
}

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

  /**
   * How many deny events each computer had from `sinceMs` (ms since the
   * epoch, inclusive) on, in one pipeline: entry ids are Redis's clock at
   * XADD in ms, so the window is measured against the caller's clock.
   * Counts nothing of scope: ask only for computers the caller may see.
   */
  async recentCounts(ids: readonly string[], sinceMs: number): Promise<Map<string, RecentCount>> {
    const out = new Map<string, RecentCount>();
    if (ids.length === 0) return out;
    const pipeline = this.conn.redis.pipeline();
    for (const id of ids)
      pipeline.xrange(keys.events(id), String(sinceMs), '+', 'COUNT', RECENT_COUNT_CAP + 1);
    // An error of one command (a reply error inside the pipeline) is judged by guard() as any other.
    const lengths = await this.conn.guard(async () =>
      ((await pipeline.exec()) ?? []).map(([error, entries]) => {
        if (error) throw error;
        return (entries as unknown[]).length;
      }),
    );
    ids.forEach((id, i) => {
      const n = lengths[i] ?? 0;
      out.set(id, { count: Math.min(n, RECENT_COUNT_CAP), capped: n > RECENT_COUNT_CAP });
    });
    return out;
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
