/** Prometheus metrics of one app instance (a registry of its own, so tests can build many apps). */
import { Counter, collectDefaultMetrics, Histogram, Registry } from 'prom-client';

export interface ApiMetrics {
  registry: Registry;
  requests: Counter<'method' | 'route' | 'status'>;
  duration: Histogram<'method' | 'route'>;
  storeUnavailable: Counter;
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
    storeUnavailable: new Counter({
      name: 'egressd_api_store_unavailable_total',
      help: 'Requests answered 503 because Redis could not be reached',
      registers: [registry],
    }),
  };
}
