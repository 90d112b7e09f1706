/**
 * The store's connection to Redis, and what its failures mean.
 *
 * Redis being unreachable surfaces as StoreUnavailableError at once (no
 * offline queue, one retry at most, a command timeout), and the client keeps
 * reconnecting in the background, so service resumes when Redis is back.
 *
 * A change that was sent but got no answer (timed out, or the connection was
 * lost before the reply) surfaces as StoreOutcomeUnknownError instead: Redis
 * may have applied it. Such a command is never sent again by the client
 * library after a reconnect (`autoResendUnfulfilledCommands: false`), so once
 * Redis answers again a read tells the outcome for good (a frozen Redis may
 * still run what it had received when it resumes: that is what it answers to
 * the next read too).
 */
import { Redis, type RedisOptions } from 'ioredis';
import { StoreOutcomeUnknownError, StoreUnavailableError } from './errors.js';
import { defineScripts, type ScriptedRedis, type ScriptName } from './scripts.js';

/**
 * A change the store makes, for the error when its outcome is unknown: what
 * was being changed, and how a caller finds out (and what is safe to repeat).
 */
export interface Change {
  what: string;
  advice: string;
}

/** Reply errors that mean "not now" rather than "bug". Either way Redis refused the command: nothing changed. */
const TRANSIENT_REPLY = /^(LOADING|BUSY|MASTERDOWN|READONLY|CLUSTERDOWN|TRYAGAIN|NOREPLICAS)\b/;

/**
 * ioredis's words for a command it refused to write (no connection, and no
 * offline queue): it never reached Redis. Any other failure of a change that
 * was handed to a ready connection may have reached it.
 */
const NOT_SENT = /^Stream isn't writeable/;

function redisOptions(url: string, commandTimeoutMs: number): RedisOptions & { path?: string } {
  const common: RedisOptions = {
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    commandTimeout: commandTimeoutMs,
    connectTimeout: 2000,
    enableAutoPipelining: true,
    // Keep trying for ever, at most a second apart.
    retryStrategy: (times) => Math.min(times * 50, 1000),
    lazyConnect: true,
  };
  if (url.startsWith('unix://')) return { ...common, path: url.slice('unix://'.length) };
  const u = new URL(url);
  return {
    ...common,
    host: u.hostname.replace(/^\[|\]$/g, '') || '127.0.0.1',
    port: u.port === '' ? 6379 : Number(u.port),
    db: u.pathname.length > 1 ? Number(u.pathname.slice(1)) : 0,
    ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
    ...(u.username ? { username: decodeURIComponent(u.username) } : {}),
  };
}

export class Connection {
  /** The main connection: every request-bound command (with a timeout), and the Lua scripts. */
  readonly redis: ScriptedRedis;

  constructor(
    private readonly url: string,
    private readonly commandTimeoutMs: number,
  ) {
    // Connects at once (a Store that nobody connect()s still comes up); ready() waits for it.
    this.redis = defineScripts(
      new Redis({
        ...redisOptions(url, commandTimeoutMs),
        lazyConnect: false,
        // A command in flight when the connection dropped is not sent again after the reconnect:
        // its caller was told the outcome is unknown, and a write applied minutes later could
        // undo a newer one. Every command of this connection has a timeout, which ends its wait.
        autoResendUnfulfilledCommands: false,
      }),
    );
    // Errors surface on commands; without a listener ioredis would log each reconnect failure.
    this.redis.on('error', () => {});
  }

  /** Another connection to the same Redis (blocking reads, subscriptions): `overrides` say how it differs. */
  open(overrides: RedisOptions): Redis {
    const client = new Redis({ ...redisOptions(this.url, this.commandTimeoutMs), ...overrides });
    client.on('error', () => {});
    return client;
  }

  /**
   * Resolves once the main connection is ready; rejects if Redis cannot be
   * reached now, or (`timeoutMs`) is not ready in time.
   */
  async ready(timeoutMs?: number): Promise<void> {
    const redis = this.redis;
    if (redis.status === 'wait') await redis.connect();
    else if (redis.status !== 'ready') {
      await new Promise<void>((resolve, reject) => {
        const timer =
          timeoutMs === undefined
            ? undefined
            : setTimeout(() => done(new Error(`not connected to Redis within ${timeoutMs} ms`)), timeoutMs);
        const done = (err?: Error) => {
          clearTimeout(timer);
          redis.off('ready', onReady);
          redis.off('error', onError);
          redis.off('end', onEnd);
          if (err) reject(err);
          else resolve();
        };
        const onReady = () => done();
        const onError = (err: Error) => done(err);
        const onEnd = () => done(new Error('Connection is closed.'));
        redis.on('ready', onReady);
        redis.on('error', onError);
        redis.on('end', onEnd);
      });
    }
  }

  /** True if Redis answers PING now. */
  async ping(): Promise<boolean> {
    try {
      return (await this.redis.ping()) === 'PONG';
    } catch {
      return false;
    }
  }

  /** Runs one of the Lua scripts (scripts.ts) on the main connection: KEYS, then ARGV. */
  run(name: ScriptName, keys: string[], args: string[], change?: Change): Promise<unknown> {
    return this.guard(() => this.redis[name](...keys, ...args), change);
  }

  /**
   * Runs `fn`, turning "Redis is not there" into StoreUnavailableError. With
   * `change` (fn writes on the main connection), a failure after the command
   * may have reached Redis is StoreOutcomeUnknownError; a change is not even
   * tried while the connection is not ready (then it surely never reached Redis).
   */
  async guard<T>(fn: () => Promise<T>, change?: Change): Promise<T> {
    if (change && this.redis.status !== 'ready') {
      throw new StoreUnavailableError(new Error(`not connected to Redis (${this.redis.status})`));
    }
    try {
      return await fn();
    } catch (err) {
      if (err instanceof StoreUnavailableError) throw err;
      if (err instanceof Error && err.name === 'ReplyError') {
        // Redis answered: a refusal that means "not now" is a 503 (it changed nothing), any other a bug.
        if (!TRANSIENT_REPLY.test(err.message)) throw err;
        throw new StoreUnavailableError(err);
      }
      if (change && !(err instanceof Error && NOT_SENT.test(err.message))) {
        throw new StoreOutcomeUnknownError(err, change.what, change.advice);
      }
      throw new StoreUnavailableError(err);
    }
  }

  close(): void {
    if (this.redis.status !== 'end') this.redis.disconnect();
  }
}
