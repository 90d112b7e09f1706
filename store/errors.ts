/**
 * The store's outage errors. They say what happened to Redis, not how to
 * answer it: the API turns them into 503s with Retry-After, the agent waits
 * and resyncs.
 */
import { EgressdError } from '../policy/errors.js';

/** Redis could not be reached (or answered that it cannot serve). Nothing was changed. */
export class StoreUnavailableError extends EgressdError {
  constructor(cause: unknown, code = 'store_unavailable', message?: string) {
    super(code, message ?? `the policy store (Redis) is unavailable, retry shortly: ${causeText(cause)}`, {
      cause,
    });
    this.name = 'StoreUnavailableError';
  }
}

/**
 * A change was sent to Redis but no answer came (the command timed out, or
 * the connection was lost before the reply): it may or may not have taken
 * effect. A StoreUnavailableError, so whoever treats "Redis is away" as
 * transient does the same here, with a code of its own and a message that
 * says how to find out: `change` names what was being changed, `advice`
 * what to GET and what is safe to repeat.
 */
export class StoreOutcomeUnknownError extends StoreUnavailableError {
  constructor(cause: unknown, change: string, advice: string) {
    super(
      cause,
      'store_outcome_unknown',
      `the policy store (Redis) did not confirm ${change} (${causeText(cause)}): it may or may not have taken effect. ${advice}`,
    );
    this.name = 'StoreOutcomeUnknownError';
  }
}

/**
 * A change is on the primary, but fewer replicas than required confirmed it
 * (WAIT) within the timeout: acknowledged to nobody, and it may or may not
 * survive a failover of the primary. A StoreUnavailableError too (a 503,
 * retry): a retry of an idempotent change is safe.
 */
export class ReplicationTimeoutError extends StoreUnavailableError {
  constructor(
    readonly acked: number,
    readonly required: number,
    timeoutMs: number,
    change: string,
    advice: string,
  ) {
    super(
      new Error(`WAIT ${required} ${timeoutMs} answered ${acked}`),
      'replication_timeout',
      `the policy store (Redis) has ${change} on its primary, but ${acked} of the ${required} replicas required ` +
        `(--redis-min-replicas) confirmed it within ${timeoutMs} ms (--redis-replica-timeout): if the primary fails ` +
        'before a replica copies it, the change is lost, so it may or may not survive. Check the replicas ' +
        "(INFO replication on the primary: connected_slaves, each one's state and lag) and retry. " +
        advice,
    );
    this.name = 'ReplicationTimeoutError';
  }
}

/**
 * The Redis given is a Redis Cluster node (INFO cluster: cluster_enabled:1).
 * egressd's scripts touch keys of many hash slots in one step, which a
 * cluster refuses; it is refused at connect, for good (not retried).
 */
export class RedisClusterError extends EgressdError {
  constructor(where: string) {
    super(
      'REDIS_CLUSTER',
      `the Redis at ${where} runs in cluster mode (cluster_enabled:1): Redis Cluster is not supported, ` +
        "because egressd's scripts change keys of many hash slots in one atomic step. Use one primary with " +
        'replicas under Redis Sentinel and give egressd the Sentinels: --redis redis+sentinel://host1:26379,' +
        'host2:26379,host3:26379/<master-name> (README, "Many hosts" and "Redis Cluster")',
    );
    this.name = 'RedisClusterError';
  }
}

function causeText(cause: unknown): string {
  return cause instanceof Error ? cause.message : String(cause);
}
