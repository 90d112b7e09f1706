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
 *
 * Every change goes through write(), the one place that knows about
 * replication: with `minReplicas` > 0 it follows the change with
 * `WAIT minReplicas timeoutMs` on the connection that made it (WAIT counts
 * the replicas that have every write of its own connection), and a change
 * fewer replicas confirmed is ReplicationTimeoutError. Those changes get a
 * connection of their own (`writer`): Redis holds a connection's next
 * commands until its WAIT ends, and on the main one that would hold every
 * read (and every key check) while a replica lags. The writer's commands
 * queue behind each WAIT; while the replicas answer that is one round trip
 * a change.
 *
 * With a redis+sentinel:// URL (redis-url.ts) every one of these clients,
 * and every one open() makes, finds the primary through the Sentinels
 * (ioredis's Sentinel mode, role master: a server that is not the primary
 * is not used) and asks them again after each disconnect; a demoted primary's
 * READONLY reconnects too. Nothing else here differs.
 */
import { Redis, type RedisOptions } from 'ioredis';
import {
  RedisClusterError,
  ReplicationTimeoutError,
  StoreOutcomeUnknownError,
  StoreUnavailableError,
} from './errors.js';
import { parseRedisUrl, type RedisTarget, RedisUrlError, redactRedisUrl } from './redis-url.js';
import { defineScripts, type ScriptedRedis, type ScriptName } from './scripts.js';

/**
 * A change the store makes, for the error when its outcome is unknown: what
 * was being changed, and how a caller finds out (and what is safe to repeat).
 */
export interface Change {
  what: string;
  advice: string;
}

/** How many replicas must have a change before it is acknowledged (store.ts StoreOptions). */
export interface Replication {
  /** 0: no WAIT, a change is acknowledged once the primary has it. */
  minReplicas: number;
  /** WAIT's timeout, ms (at least 1: WAIT's 0 would wait for ever). */
  timeoutMs: number;
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
  let target: RedisTarget;
  try {
    target = parseRedisUrl(url);
  } catch (err) {
    // Checked at start already (cli/options.ts); a Store made with a bad URL says which.
    if (err instanceof RedisUrlError)
      throw new RedisUrlError(`the Redis URL ${redactRedisUrl(url)} ${err.message}`);
    throw err;
  }
  switch (target.kind) {
    case 'socket':
      return { ...common, path: target.path };
    case 'server': {
      const { kind: _, tls, ...server } = target;
      return { ...common, ...server, ...(tls ? { tls: {} } : {}) };
    }
    case 'sentinel':
      return {
        ...common,
        sentinels: target.sentinels,
        name: target.name,
        role: 'master',
        db: target.db,
        ...(target.username ? { username: target.username } : {}),
        ...(target.password ? { password: target.password } : {}),
        // Each round over every Sentinel that fails is retried, at most a second apart, for ever
        // (commands meanwhile fail at once: no offline queue); a Sentinel that hangs is skipped.
        sentinelRetryStrategy: (times) => Math.min(times * 50, 1000),
        sentinelCommandTimeout: 1000,
        // A primary that was demoted (not dead) refuses writes with READONLY: reconnect, and so
        // ask the Sentinels for the new primary. The command is not sent again (it failed: 503).
        reconnectOnError: (err) => (/^READONLY\b/.test(err.message) ? 1 : false),
      };
  }
}

export class Connection {
  /** The main connection: every request-bound command (with a timeout), and the Lua scripts. */
  readonly redis: ScriptedRedis;
  /** Where write() makes changes: the main connection, or (minReplicas > 0) one of its own. */
  private readonly writer: ScriptedRedis;

  constructor(
    private readonly url: string,
    private readonly commandTimeoutMs: number,
    private readonly replication: Replication = { minReplicas: 0, timeoutMs: 1000 },
  ) {
    this.redis = this.scripted(commandTimeoutMs);
    // The writer's commands may wait for WAIT's timeout first (see the header), then run.
    this.writer =
      replication.minReplicas > 0 ? this.scripted(commandTimeoutMs + replication.timeoutMs) : this.redis;
  }

  /** A connection with the scripts, connecting at once (a Store nobody connect()s still comes up). */
  private scripted(commandTimeoutMs: number): ScriptedRedis {
    const redis = defineScripts(
      new Redis({
        ...redisOptions(this.url, commandTimeoutMs),
        lazyConnect: false,
        // A command in flight when the connection dropped is not sent again after the reconnect:
        // its caller was told the outcome is unknown, and a write applied minutes later could
        // undo a newer one. Every command of this connection has a timeout, which ends its wait.
        autoResendUnfulfilledCommands: false,
      }),
    );
    // Errors surface on commands; without a listener ioredis would log each reconnect failure.
    redis.on('error', () => {});
    return redis;
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
    await Promise.all([...new Set([this.redis, this.writer])].map((redis) => ready(redis, timeoutMs)));
  }

  /**
   * Refuses a Redis Cluster node (RedisClusterError): called at each connect
   * (Store.connect, the agent's resyncs). Redis unreachable: StoreUnavailableError.
   */
  async refuseCluster(): Promise<void> {
    const info = await this.guard(() => this.redis.info('cluster'));
    if (/^cluster_enabled:1\b/m.test(info)) throw new RedisClusterError(redactRedisUrl(this.url));
  }

  /** True if Redis answers PING now. */
  async ping(): Promise<boolean> {
    try {
      return (await this.redis.ping()) === 'PONG';
    } catch {
      return false;
    }
  }

  /**
   * Runs one of the Lua scripts (scripts.ts): KEYS, then ARGV. With
   * `change` (the script writes) it is a write(); otherwise it runs on the
   * main connection.
   */
  run(name: ScriptName, keys: string[], args: string[], change?: Change): Promise<unknown> {
    if (change) return this.write(change, (redis) => redis[name](...keys, ...args));
    return this.guard(() => this.redis[name](...keys, ...args));
  }

  /**
   * Makes a change that is acknowledged to a caller: `fn` writes on the
   * connection it is given, and nothing else. Not tried while that
   * connection is not ready (then it surely never reached Redis); a failure
   * after it may have reached Redis is StoreOutcomeUnknownError. With
   * minReplicas > 0, then WAITs on that connection: fewer replicas than
   * that within the timeout is ReplicationTimeoutError (the change is on
   * the primary, and may or may not survive its failover).
   */
  async write<T>(change: Change, fn: (redis: ScriptedRedis) => Promise<T>): Promise<T> {
    const redis = this.writer;
    if (redis.status !== 'ready') {
      throw new StoreUnavailableError(new Error(`not connected to Redis (${redis.status})`));
    }
    const { minReplicas, timeoutMs } = this.replication;
    return this.guarded(async () => {
      const result = await fn(redis);
      if (minReplicas > 0) {
        const acked = await redis.wait(minReplicas, timeoutMs);
        if (acked < minReplicas) {
          throw new ReplicationTimeoutError(acked, minReplicas, timeoutMs, change.what, change.advice);
        }
      }
      return result;
    }, change);
  }

  /**
   * Runs `fn` (reads on the main connection: changes go through write()),
   * turning "Redis is not there" into StoreUnavailableError, and a refusal
   * that means "not now" too.
   */
  guard<T>(fn: () => Promise<T>): Promise<T> {
    return this.guarded(fn);
  }

  /** guard(), and with `change` (write()'s) a failure after it may have reached Redis is StoreOutcomeUnknownError. */
  private async guarded<T>(fn: () => Promise<T>, change?: Change): Promise<T> {
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
    for (const redis of new Set([this.redis, this.writer])) {
      if (redis.status !== 'end') redis.disconnect();
    }
  }
}

/** Resolves once `redis` is ready; rejects if it cannot connect now, or (`timeoutMs`) is not ready in time. */
async function ready(redis: Redis, timeoutMs?: number): Promise<void> {
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
