/**
 * The process's one reader of computers' deny-event streams. Every SSE
 * stream of the API subscribes here by computer id; one blocking XREAD over
 * the streams of all the computers that have a subscriber, on one
 * connection of its own, reads their new events, and each event is handed
 * to every subscriber of its computer in memory. No Redis client per
 * subscriber: 10,000 SSE streams cost one connection.
 *
 * - A subscriber sees what is appended after it subscribed. The first
 *   subscriber of a computer reads the newest id of its stream (XREVRANGE,
 *   on the main connection) before the computer joins the XREAD; later ones
 *   join at the position the feed has read up to, so they may also see an
 *   event appended a moment before they came, but never miss one after.
 * - A computer that joins interrupts the XREAD in flight (CLIENT UNBLOCK of
 *   the reader, sent on the main connection), which is then re-issued with
 *   the new set. Where UNBLOCK is not allowed (an ACL), the next XREAD (at
 *   most `blockMs` later) includes the computer; it reads from its cursor,
 *   so nothing is lost, only delayed. A computer whose last subscriber left
 *   drops out at the next XREAD.
 * - The reader's connection dropping ends every subscriber (`end('store')`):
 *   their clients reconnect, and get 503 until Redis is back.
 */
import type { Redis } from 'ioredis';
import { StoreUnavailableError } from './errors.js';

/** One SSE stream, as the feed sees it. Neither method may throw. */
export interface FeedSubscriber {
  /** One event of the computer: its JSON text, one line. */
  event(json: string): void;
  /** The feed stopped following: Redis went away ('store'), the feed was closed, or the computer was deleted ('gone'). */
  end(reason: 'store' | 'closed' | 'gone'): void;
}

export interface EventFeedOptions {
  /** A new connection for the blocking reads (no command timeout, no offline queue; connecting already). */
  connect: () => Redis;
  /** CLIENT UNBLOCK of the reader, sent on another connection: 1 if it was blocked, 0 if not. */
  unblock: (clientId: number) => Promise<number>;
  /** The id of a computer's newest event ('0-0' when none); rejects with StoreUnavailableError. */
  cursor: (computerId: string) => Promise<string>;
  /** The stream key of a computer's events. */
  streamKey: (computerId: string) => string;
  /**
   * Milliseconds each XREAD blocks: how late a joining computer's events can be
   * when UNBLOCK is refused, and how often an idle set is read again.
   * @default 2000
   */
  blockMs?: number;
  /**
   * Most events read of one computer per XREAD.
   * @default 256
   */
  count?: number;
  /**
   * How long a subscriber waits for the reader's connection to be up before 503.
   * @default 2000
   */
  connectWaitMs?: number;
}

interface Followed {
  id: string;
  key: string;
  /** The stream id read up to; undefined until the first subscriber's cursor read answered. */
  cursor: string | undefined;
  ready: Promise<void>;
  subscribers: Set<FeedSubscriber>;
}

type XReadReply = [key: string, entries: [id: string, fields: string[]][]][] | null;

export class EventFeed {
  private readonly options: Required<EventFeedOptions>;
  /** By computer id: the computers that have at least one subscriber. */
  private readonly followed = new Map<string, Followed>();
  private reader: Redis | undefined;
  /** CLIENT ID of the reader's current connection. */
  private readerId: number | undefined;
  private loop: Promise<void> | undefined;
  private wakeIdle: (() => void) | undefined;
  /** Bumped whenever a computer joins the set: an XREAD issued at an older generation is stale. */
  private generation = 0;
  /** The generation of the XREAD in flight, if one is. */
  private inFlight: number | undefined;
  private unblocking = false;
  private closed = false;

  constructor(options: EventFeedOptions) {
    this.options = { blockMs: 2000, count: 256, connectWaitMs: 2000, ...options };
  }

  /** Computers followed now. */
  get computers(): number {
    return this.followed.size;
  }

  /**
   * Follows a computer's events for `subscriber` from now on; resolves with
   * the function that stops it. Rejects with StoreUnavailableError (503)
   * when Redis cannot be reached.
   */
  async subscribe(computerId: string, subscriber: FeedSubscriber): Promise<() => void> {
    if (this.closed) throw new StoreUnavailableError(new Error('the event feed is closed'));
    await this.readerUp();
    const entry = this.followed.get(computerId) ?? this.follow(computerId);
    entry.subscribers.add(subscriber);
    try {
      await entry.ready;
    } catch (err) {
      entry.subscribers.delete(subscriber);
      throw err;
    }
    // The reader's connection dropped while the cursor was read: that entry is gone.
    if (this.followed.get(computerId) !== entry || !entry.subscribers.has(subscriber)) {
      entry.subscribers.delete(subscriber);
      throw new StoreUnavailableError(new Error('the connection reading events was lost'));
    }
    this.loop ??= this.run();
    return () => {
      entry.subscribers.delete(subscriber);
      if (entry.subscribers.size === 0 && this.followed.get(computerId) === entry) {
        this.followed.delete(computerId);
      }
    };
  }

  /** A new entry for a computer: it joins the XREAD once the newest id of its stream is read. */
  private follow(computerId: string): Followed {
    const cursor = this.options.cursor(computerId);
    const entry: Followed = {
      id: computerId,
      key: this.options.streamKey(computerId),
      cursor: undefined,
      ready: cursor.then(
        (id) => {
          entry.cursor = id;
          if (this.followed.get(computerId) === entry) this.joined();
        },
        (err: unknown) => {
          if (this.followed.get(computerId) === entry) this.followed.delete(computerId);
          throw err;
        },
      ),
      subscribers: new Set(),
    };
    this.followed.set(computerId, entry);
    return entry;
  }

  /**
   * Ends every subscriber of a deleted computer ('gone'): the events of a
   * computer registered later under its id are not theirs to see.
   */
  endComputer(computerId: string): void {
    const entry = this.followed.get(computerId);
    if (!entry) return;
    this.followed.delete(computerId);
    for (const s of [...entry.subscribers]) s.end('gone');
  }

  /** Ends every subscriber ('closed') and the reader's connection. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.endAll('closed');
    this.reader?.disconnect();
    this.wakeIdle?.();
  }

  /** The reader's connection, up; StoreUnavailableError if it is not up within connectWaitMs. */
  private async readerUp(): Promise<Redis> {
    if (!this.reader) {
      const reader = this.options.connect();
      reader.on('error', () => {});
      reader.on('close', () => {
        this.readerId = undefined;
        this.endAll('store');
      });
      this.reader = reader;
    }
    const reader = this.reader;
    if (reader.status === 'ready') return reader;
    await new Promise<void>((resolve, reject) => {
      const done = (err?: Error) => {
        clearTimeout(timer);
        reader.off('ready', onReady);
        if (err) reject(new StoreUnavailableError(err));
        else resolve();
      };
      const onReady = () => done();
      const timer = setTimeout(
        () => done(new Error(`the connection reading events is ${reader.status}`)),
        this.options.connectWaitMs,
      );
      reader.on('ready', onReady);
    });
    return reader;
  }

  /** Ends every subscriber of every computer whose cursor is known, and forgets them all. */
  private endAll(reason: 'store' | 'closed'): void {
    const all = [...this.followed.values()];
    this.followed.clear();
    for (const f of all) {
      // Subscribers still waiting for their cursor are told by subscribe()'s rejection instead.
      if (f.cursor === undefined) continue;
      for (const s of f.subscribers) s.end(reason);
    }
  }

  /** A computer joined: re-issue the XREAD with it. */
  private joined(): void {
    this.generation++;
    this.wakeIdle?.();
    this.interrupt();
  }

  /** Interrupts a stale XREAD in flight; retried while it has not reached Redis yet. */
  private interrupt(): void {
    if (this.unblocking || this.inFlight === undefined || this.inFlight === this.generation) return;
    const id = this.readerId;
    if (id === undefined) return;
    this.unblocking = true;
    this.options.unblock(id).then(
      (n) => {
        this.unblocking = false;
        // 0: the XREAD was not blocked yet (still on its way) or had just returned.
        if (n === 0) setTimeout(() => this.interrupt(), 5).unref();
      },
      () => {
        // Not allowed (ACL) or Redis away: the XREAD ends by itself within blockMs.
        this.unblocking = false;
      },
    );
  }

  private async run(): Promise<void> {
    while (!this.closed) {
      const issued = [...this.followed.values()].filter((f) => f.cursor !== undefined);
      if (issued.length === 0) {
        await new Promise<void>((resolve) => {
          this.wakeIdle = resolve;
        });
        this.wakeIdle = undefined;
        continue;
      }
      const reader = this.reader;
      if (reader?.status !== 'ready') {
        this.endAll('store');
        continue;
      }
      let reply: XReadReply;
      try {
        this.readerId ??= await reader.client('ID');
        this.inFlight = this.generation;
        reply = (await reader.xread(
          'COUNT',
          this.options.count,
          'BLOCK',
          this.options.blockMs,
          'STREAMS',
          ...issued.map((f) => f.key),
          ...issued.map((f) => f.cursor as string),
        )) as XReadReply;
      } catch {
        // The connection dropped (its 'close' ended everyone already) or Redis refused the read.
        this.endAll('store');
        continue;
      } finally {
        this.inFlight = undefined;
      }
      if (reply) this.dispatch(issued, reply);
    }
  }

  private dispatch(issued: Followed[], reply: NonNullable<XReadReply>): void {
    const byKey = new Map(issued.map((f) => [f.key, f]));
    for (const [key, entries] of reply) {
      const f = byKey.get(key);
      // Gone while the read was in flight (last subscriber left, or the connection dropped).
      if (!f || this.followed.get(f.id) !== f) continue;
      for (const [entryId, fields] of entries) {
        f.cursor = entryId;
        const json = eventJson(fields);
        if (json === undefined) continue;
        for (const s of f.subscribers) s.event(json);
      }
    }
  }
}

/** The `event` field of a stream entry as one line of JSON (re-serialised if it spans lines). */
function eventJson(fields: string[]): string | undefined {
  let text: string | undefined;
  for (let i = 0; i + 1 < fields.length; i += 2) if (fields[i] === 'event') text = fields[i + 1];
  if (text === undefined) return undefined;
  if (!/[\r\n]/.test(text)) return text;
  try {
    return JSON.stringify(JSON.parse(text));
  } catch {
    return undefined;
  }
}
