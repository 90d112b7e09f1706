/**
 * The event streams (Server-Sent Events) open in this process, and the rules
 * they live by: how many one key and the process may hold (429 / 503
 * beyond), one heartbeat for all of them, a bound on what a slow client may
 * leave unsent (past it the stream is dropped, not its events), and the end
 * of a key's streams when the key is revoked — on the revocation notice
 * (`Store.onKeyRevoked`, from any API process) or, as a safety net, when a
 * periodic re-read of the keys finds it gone.
 *
 * The events themselves come from the store's EventFeed: an EventStream is
 * one of its subscribers.
 */
import type { ServerResponse } from 'node:http';
import { StoreUnavailableError } from '../store/errors.js';
import type { FeedSubscriber } from '../store/event-feed.js';
import type { Principal } from './auth.js';
import { ApiError, computerNotFound, storeUnavailable } from './errors.js';
import type { ApiMetrics } from './metrics.js';

/** Why a stream ended: its client went away, its key was revoked, it fell too far behind, Redis went away, shutdown, its computer was deleted. */
export type EndReason = 'client' | 'revoked' | 'slow' | 'store' | 'closed' | 'gone';

export interface EventStreamsOptions {
  /** Most streams one key holds open (the admin key is one key). */
  perKey: number;
  /** Most streams of the process. */
  max: number;
  /** Whether a tenant key still exists; rejects when that cannot be told now. */
  keyExists: (keyId: string) => Promise<boolean>;
  /** Whether a dashboard session (sha256 of its id) still lives: its streams end with it. */
  sessionExists?: (idHash: string) => Promise<boolean>;
  metrics: ApiMetrics;
  /**
   * How often the keys of open streams are read again, in case a revocation
   * notice was lost, in milliseconds.
   * @default 10000
   */
  keyCheckMs?: number;
  /**
   * How often every stream gets a `: keep-alive` comment, in milliseconds.
   * @default 15000
   */
  heartbeatMs?: number;
  /**
   * Bytes a stream may have waiting to be sent (beyond what the kernel's
   * socket buffer holds); a stream over it is dropped (its client
   * reconnects), so a client that does not read costs bounded memory.
   * @default 65536
   */
  maxBacklogBytes?: number;
  /**
   * `Retry-After` of the 429 and 503 answers, in seconds.
   * @default 5
   */
  retryAfterSeconds?: number;
}

/** The holder of the admin key's streams (tenant keys' holders are their 16-hex ids). */
const ADMIN = 'admin';

/** How long a revoked key id is remembered, so that a stream opened just as it was revoked ends too. */
const REVOKED_MEMORY_MS = 60_000;

const LAST_WORDS: Record<Exclude<EndReason, 'client' | 'slow'>, string> = {
  revoked: ': the API key of this stream was revoked\n\n',
  store: ': the event store (Redis) went away; reconnect\n\n',
  closed: ': the server is shutting down; reconnect\n\n',
  gone: ': the computer of this stream was deleted\n\n',
};

export class EventStreams {
  private readonly options: Required<EventStreamsOptions>;
  private readonly byHolder = new Map<string, Set<EventStream>>();
  private count = 0;
  private timers: NodeJS.Timeout[] = [];
  private checking = false;
  /** Key id → until when it counts as just revoked. */
  private readonly revoked = new Map<string, number>();

  constructor(options: EventStreamsOptions) {
    this.options = {
      keyCheckMs: 10_000,
      heartbeatMs: 15_000,
      maxBacklogBytes: 64 * 1024,
      retryAfterSeconds: 5,
      sessionExists: async () => true,
      ...options,
    };
  }

  /** Streams open now. */
  get size(): number {
    return this.count;
  }

  /**
   * Takes a slot for a stream of `principal` that will answer on `res`, or
   * throws 429 too_many_streams (the key's limit) / 503 streams_at_capacity
   * (the process's). The slot is held until the stream ends or is cancelled.
   */
  open(principal: Principal, res: ServerResponse, session?: string): EventStream {
    const holder = principal.kind === 'admin' ? ADMIN : principal.keyId;
    const { perKey, max, retryAfterSeconds: retryAfter, metrics } = this.options;
    if (this.isRevoked(holder)) {
      throw new ApiError(
        401,
        'unauthorized',
        'unknown or revoked API key: check the key, or ask the admin for a new one',
      );
    }
    const held = this.byHolder.get(holder);
    if ((held?.size ?? 0) >= perKey) {
      metrics.eventStreamsRefused.inc({ limit: 'per_key' });
      throw new ApiError(
        429,
        'too_many_streams',
        `this API key already holds ${perKey} open event streams, the most one key may (EGRESSD_SSE_PER_KEY): close one and retry, or have the operator raise EGRESSD_SSE_PER_KEY`,
        undefined,
        { retryAfter },
      );
    }
    if (this.count >= max) {
      metrics.eventStreamsRefused.inc({ limit: 'capacity' });
      throw new ApiError(
        503,
        'streams_at_capacity',
        `this API process already serves ${max} event streams, its maximum (EGRESSD_SSE_MAX): retry later or on another replica, or have the operator raise EGRESSD_SSE_MAX (and the open-files limit with it)`,
        undefined,
        { retryAfter },
      );
    }
    const stream = new EventStream(this, holder, res, this.options.maxBacklogBytes, session);
    if (held) held.add(stream);
    else this.byHolder.set(holder, new Set([stream]));
    this.count++;
    metrics.eventStreams.set(this.count);
    if (this.count === 1) this.startTimers();
    return stream;
  }

  /** Ends every stream of a revoked key (and refuses it for a while, see REVOKED_MEMORY_MS). */
  revoke(keyId: string): void {
    const now = Date.now();
    for (const [id, until] of this.revoked) if (until <= now) this.revoked.delete(id);
    this.revoked.set(keyId, now + REVOKED_MEMORY_MS);
    for (const stream of [...(this.byHolder.get(keyId) ?? [])]) stream.end('revoked');
  }

  /** Reads every tenant key that holds streams again; ends the streams of those that are gone. */
  async checkKeys(): Promise<void> {
    if (this.checking) return;
    this.checking = true;
    try {
      const ids = [...this.byHolder.keys()].filter((holder) => holder !== ADMIN);
      // A key that cannot be read now (Redis away) keeps its streams; the feed ends them if Redis is gone.
      const exists = await Promise.all(ids.map((id) => this.options.keyExists(id).catch(() => true)));
      ids.forEach((id, i) => {
        if (!exists[i]) this.revoke(id);
      });
      // A stream opened through a dashboard session ends with it (signed out, idle, too old).
      const bySession = new Map<string, EventStream[]>();
      for (const held of this.byHolder.values())
        for (const s of held)
          if (s.session) bySession.set(s.session, [...(bySession.get(s.session) ?? []), s]);
      const sessionExists = this.options.sessionExists;
      if (bySession.size > 0) {
        const sessions = [...bySession.keys()];
        const live = await Promise.all(sessions.map((h) => sessionExists(h).catch(() => true)));
        sessions.forEach((h, i) => {
          if (!live[i]) for (const s of bySession.get(h) ?? []) s.end('revoked');
        });
      }
    } finally {
      this.checking = false;
    }
  }

  /** @internal Called by a stream when it ends or is cancelled. */
  release(stream: EventStream, reason: EndReason | undefined): void {
    const held = this.byHolder.get(stream.holder);
    if (!held?.delete(stream)) return;
    if (held.size === 0) this.byHolder.delete(stream.holder);
    this.count--;
    const { metrics } = this.options;
    metrics.eventStreams.set(this.count);
    if (reason) metrics.eventStreamsEnded.inc({ reason });
    if (this.count === 0) this.stopTimers();
  }

  private isRevoked(holder: string): boolean {
    const until = this.revoked.get(holder);
    return until !== undefined && until > Date.now();
  }

  /** One heartbeat and one key check for all streams, running while any is open. */
  private startTimers(): void {
    this.timers = [
      setInterval(() => {
        for (const held of this.byHolder.values()) for (const stream of held) stream.heartbeat();
      }, this.options.heartbeatMs).unref(),
      setInterval(() => void this.checkKeys(), this.options.keyCheckMs).unref(),
    ];
  }

  private stopTimers(): void {
    for (const timer of this.timers) clearInterval(timer);
    this.timers = [];
  }
}

/**
 * One SSE response. Until `start()` (the route is still checking the
 * computer and subscribing) it writes nothing; after that every event is one
 * `data:` line of JSON.
 */
export class EventStream implements FeedSubscriber {
  private started = false;
  private endedBy: EndReason | 'cancelled' | undefined;
  private readonly onEnd: (() => void)[] = [];

  constructor(
    private readonly owner: EventStreams,
    readonly holder: string,
    private readonly res: ServerResponse,
    private readonly maxBacklogBytes: number,
    /** The dashboard session it was opened through, if any. */
    readonly session?: string,
  ) {
    res.once('close', () => this.end('client'));
  }

  /** Sends the status, the headers and a first comment. */
  start(): void {
    if (this.started || this.endedBy) return;
    this.started = true;
    this.res.writeHead(200, {
      'Content-Type': 'text/event-stream; charset=utf-8',
      'Cache-Control': 'no-store',
      // The connection ends with the stream (revoked, Redis gone, shutdown): nothing reuses it.
      Connection: 'close',
      // Proxies that buffer responses (nginx) would hold events back.
      'X-Accel-Buffering': 'no',
    });
    this.res.write(': connected\n\n');
  }

  event(json: string): void {
    this.send(`data: ${json}\n\n`);
  }

  heartbeat(): void {
    this.send(': keep-alive\n\n');
  }

  /** Ends the stream (a comment says why, where the client can still read it) and frees its slot. */
  end(reason: EndReason): void {
    if (this.endedBy) return;
    this.endedBy = reason;
    if (reason === 'slow') this.res.destroy();
    else if (reason !== 'client' && this.started) this.res.end(LAST_WORDS[reason]);
    this.finish(reason);
  }

  /** Frees the slot of a stream that never started (the route answers the request with an error). */
  cancel(): void {
    if (this.endedBy) return;
    this.endedBy = 'cancelled';
    this.finish(undefined);
  }

  /** Runs `fn` when the stream ends or is cancelled (at once if it has). */
  whenEnded(fn: () => void): void {
    if (this.endedBy) fn();
    else this.onEnd.push(fn);
  }

  /** For a stream that ended before it started: the error to answer with (undefined: its client is gone or it is live). */
  failure(): ApiError | undefined {
    if (this.started) return undefined;
    switch (this.endedBy) {
      case 'revoked':
        return new ApiError(
          401,
          'unauthorized',
          'unknown or revoked API key: check the key, or ask the admin for a new one',
        );
      case 'store':
      case 'closed':
        return storeUnavailable(
          new StoreUnavailableError(new Error('the connection reading events was lost')),
        );
      case 'gone':
        return computerNotFound();
      default:
        return undefined;
    }
  }

  /** True once the stream ended or was cancelled. */
  get ended(): boolean {
    return this.endedBy !== undefined;
  }

  private send(text: string): void {
    if (this.endedBy) return;
    this.start();
    // What Node holds for this response and its socket beyond the kernel's buffer.
    if (this.res.writableLength > this.maxBacklogBytes) {
      this.end('slow');
      return;
    }
    this.res.write(text);
  }

  private finish(reason: EndReason | undefined): void {
    this.owner.release(this, reason);
    for (const fn of this.onEnd.splice(0)) fn();
  }
}
