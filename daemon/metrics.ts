/**
 * The agent's Prometheus metrics. In `egressd all` they share the API's
 * registry (one /metrics, behind the admin key); `egressd agent` serves them
 * on --metrics-listen without a key (loopback by default).
 */
import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';

export interface AgentMetrics {
  registry: Registry;
  denials: Counter<'computer' | 'reason' | 'audit'>;
  eventsDropped: Counter<'computer'>;
  applySeconds: Histogram;
  enforcementLagSeconds: Histogram;
  dnsQueries: Counter;
  dnsFailClosed: Counter;
  dnsSeconds: Histogram;
  redisConnected: Gauge;
  mapEntries: Gauge<'map'>;
  mapMemory: Gauge<'map'>;
  computerStates: Gauge<'state'>;
  attachmentRepairs: Counter;
  dnsPortsExhausted: Counter;
  versionRegressions: Counter<'computer'>;
  storeLost: Gauge;
}

export function createAgentMetrics(registry = new Registry()): AgentMetrics {
  const registers = [registry];
  return {
    registry,
    denials: new Counter({
      name: 'egressd_denials_total',
      help: 'Refused connects, sendmsgs and socket creations, by computer and reason; audit="true": let through (the policy is in audit)',
      labelNames: ['computer', 'reason', 'audit'],
      registers,
    }),
    eventsDropped: new Counter({
      name: 'egressd_deny_events_dropped_total',
      help: 'Deny events not logged or stored because of the per-computer rate limit',
      labelNames: ['computer'],
      registers,
    }),
    applySeconds: new Histogram({
      name: 'egressd_policy_apply_seconds',
      help: 'Time to attach a computer or install its policy in the kernel',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    }),
    enforcementLagSeconds: new Histogram({
      name: 'egressd_enforcement_lag_seconds',
      help: 'From a change record written to Redis to its policy enforced by this agent',
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30],
      registers,
    }),
    dnsQueries: new Counter({
      name: 'egressd_dns_queries_total',
      help: 'DNS queries the proxy handled',
      registers,
    }),
    dnsFailClosed: new Counter({
      name: 'egressd_dns_fail_closed_total',
      help: 'DNS answers replaced by SERVFAIL: the learned-map write failed or the upstream timed out',
      registers,
    }),
    dnsSeconds: new Histogram({
      name: 'egressd_dns_proxy_seconds',
      help: 'Time from a query reaching the proxy to its answer leaving it',
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 3],
      registers,
    }),
    redisConnected: new Gauge({
      name: 'egressd_agent_redis_connected',
      help: '1 while the agent follows Redis, 0 while it retries (enforcement continues from pins)',
      registers,
    }),
    mapEntries: new Gauge({
      name: 'egressd_map_entries',
      help: 'Entries this agent installed in the rule maps, by map',
      labelNames: ['map'],
      registers,
    }),
    mapMemory: new Gauge({
      name: 'egressd_map_memory_bytes',
      help: "The kernel's memory figure for each BPF map (memlock in fdinfo; 0 for LPM tries, which allocate as they grow)",
      labelNames: ['map'],
      registers,
    }),
    computerStates: new Gauge({
      name: 'egressd_computers',
      help: 'Computers of this node by the state the agent reports (enforced, dns_ports_exhausted, cgroup_missing, cgroup_forbidden, version_regressed)',
      labelNames: ['state'],
      registers,
    }),
    attachmentRepairs: new Counter({
      name: 'egressd_attachment_repairs_total',
      help: "Attachments the periodic check found on another cgroup than the one at the computer's path, and repaired",
      registers,
    }),
    dnsPortsExhausted: new Counter({
      name: 'egressd_dns_ports_exhausted_total',
      help: 'Computers enforced with DNS refused because no DNS proxy port was free (widen --dns-ports)',
      registers,
    }),
    versionRegressions: new Counter({
      name: 'egressd_version_regressions_total',
      help: 'Versions of a policy refused because they are older than the one in force (the store lost writes: a Redis failover); once per computer and version',
      labelNames: ['computer'],
      registers,
    }),
    storeLost: new Gauge({
      name: 'egressd_store_lost',
      help: '1 while the store is not the one the agent follows (Redis came back empty or was replaced) and no operator accepted it: the agent keeps what it enforces and follows nothing',
      registers,
    }),
  };
}

/** Serves the registry as Prometheus text on host:port (egressd agent). */
/** The egressd_map_memory_bytes gauge, by map (one read of /proc/self/fdinfo per map). */
export function measureMapMemory(
  metrics: AgentMetrics | undefined,
  enforcer: { mapMemory(): Record<string, number> },
): void {
  if (!metrics) return;
  for (const [map, bytes] of Object.entries(enforcer.mapMemory())) metrics.mapMemory.set({ map }, bytes);
}

export function serveMetrics(registry: Registry, host: string, port: number): Promise<Server> {
  const server = createServer((req, res) => {
    if (req.url !== '/metrics') {
      res.writeHead(404).end();
      return;
    }
    registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
      () => res.writeHead(500).end(),
    );
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve(server));
  });
}
