/** Prometheus metrics of one app instance (a registry of its own, so tests can build many apps). */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';

export interface ApiMetrics {
  registry: Registry;
  requests: Counter<'method' | 'route' | 'status'>;
  duration: Histogram<'method' | 'route'>;
  /** Requests answered 503 because of Redis, store_outcome_unknown included. */
  storeUnavailable: Counter;
  /** Of those, changes sent to Redis without an answer (store_outcome_unknown). */
  storeOutcomeUnknown: Counter;
  /** Policy changes by how they were answered: enforced (200) or pending (202). */
  policyChanges: Counter<'result'>;
  /** Time spent waiting for the agent's acknowledgement. */
  enforcementWait: Histogram<'result'>;
  /** Event streams (SSE) open now in this process. */
  eventStreams: Gauge;
  /** Event streams refused by a limit: per_key (429) or capacity (503). */
  eventStreamsRefused: Counter<'limit'>;
  /** Event streams ended, by reason: client, revoked, slow, store, closed. */
  eventStreamsEnded: Counter<'reason'>;
}

export function createMetrics(registry = new Registry(), defaults = true): ApiMetrics {
  if (defaults) collectDefaultMetrics({ register: registry, prefix: 'egressd_api_process_' });
  return {
    registry,
    requests: new Counter({
      name: 'egressd_api_requests_total',
      help: 'HTTP requests answered, by method, route and status',
      labelNames: ['method', 'route', 'status'],
      registers: [registry],
    }),
    duration: new Histogram({
      name: 'egressd_api_request_duration_seconds',
      help: 'HTTP request duration, by method and route',
      labelNames: ['method', 'route'],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry],
    }),
    policyChanges: new Counter({
      name: 'egressd_api_policy_changes_total',
      help: 'Policy PUTs and DELETEs answered, by result: enforced (200) or pending (202)',
      labelNames: ['result'],
      registers: [registry],
    }),
    enforcementWait: new Histogram({
      name: 'egressd_api_enforcement_wait_seconds',
      help: "Time a policy change waited for the agent's acknowledgement, by result",
      labelNames: ['result'],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers: [registry],
    }),
    eventStreams: new Gauge({
      name: 'egressd_api_event_streams',
      help: 'Event streams (SSE) open in this process',
      registers: [registry],
    }),
    eventStreamsRefused: new Counter({
      name: 'egressd_api_event_streams_refused_total',
      help: 'Event streams refused, by limit: per_key (429 too_many_streams) or capacity (503 streams_at_capacity)',
      labelNames: ['limit'],
      registers: [registry],
    }),
    eventStreamsEnded: new Counter({
      name: 'egressd_api_event_streams_ended_total',
      help: 'Event streams ended, by reason: client (went away), revoked (its key), slow (backlog over the bound), store (Redis went away), closed (shutdown)',
      labelNames: ['reason'],
      registers: [registry],
    }),
    storeUnavailable: new Counter({
      name: 'egressd_api_store_unavailable_total',
      help: 'Requests answered 503 because Redis could not be reached (store_outcome_unknown included)',
      registers: [registry],
    }),
    storeOutcomeUnknown: new Counter({
      name: 'egressd_api_store_outcome_unknown_total',
      help: 'Changes answered 503 store_outcome_unknown: sent to Redis, no answer (they may have taken effect)',
      registers: [registry],
    }),
  };
}
