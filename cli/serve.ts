/**
 * The long-running modes: `egressd` / `egressd all` (one host: the embedded
 * Redis unless REDIS_URL is given, the agent in a child process of its own,
 * see agent-process.ts, and the API), `egressd agent` and `egressd api`
 * (many hosts against one Redis). The API serves through api-server.ts, in
 * this process or in --api-workers processes.
 */
import { execFile } from 'node:child_process';
import cluster from 'node:cluster';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { type AddressInfo, createServer, isIP } from 'node:net';
import path from 'node:path';
import type { Logger } from 'pino';
import { Agent } from '../daemon/agent/agent.js';
import { NodeStatusPublisher } from '../daemon/agent/node-status.js';
import { Observer } from '../daemon/agent/observer.js';
import { cgroupOfProcess } from '../daemon/agent/placement.js';
import { DnsProxy, type DnsProxyOptions } from '../daemon/dns/proxy.js';
import { parseHostPort, systemResolvers } from '../daemon/dns/upstream.js';
import { EmbeddedRedis } from '../daemon/embedded-redis.js';
import { DenyEvents, type DenyRecord } from '../daemon/events.js';
import { Enforcer } from '../daemon/kernel/enforcer.js';
import { preflight } from '../daemon/kernel/system.js';
import { createLogger, resolveLogFormat } from '../daemon/log.js';
import { type AgentMetrics, createAgentMetrics, serveMetrics } from '../daemon/metrics.js';
import { EgressdError } from '../policy/errors.js';
import { RedisClusterError } from '../store/errors.js';
import { Store } from '../store/store.js';
import { AgentProcess, supervisorStop, tellSupervisor } from './agent-process.js';
import { type Stopper, startApi } from './api-server.js';
import { checkProxyAddressesLocal, type EgressdConfig, hideSecrets, parseListen } from './config.js';

export type ServeMode = 'all' | 'agent' | 'api';

/**
 * One agent per pin directory: an abstract unix socket named after it is
 * held for the agent's lifetime and released by the kernel if it dies.
 */
async function lockPinDir(pinDir: string): Promise<Stopper> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(
        err.code === 'EADDRINUSE'
          ? new EgressdError(
              'AGENT_RUNNING',
              `another egressd agent already manages ${pinDir}: stop it first`,
            )
          : err,
      ),
    );
    server.listen({ path: `\0egressd-agent:${pinDir}` }, resolve);
  });
  return () => new Promise<void>((resolve) => server.close(() => resolve()));
}

/** EGRESSD_ADMIN_KEY, or the key in <state-dir>/admin.key, generated (0600) at first start. */
export function adminKey(config: EgressdConfig, log: Logger): string {
  if (config.adminKey) return config.adminKey;
  const file = path.join(config.stateDir, 'admin.key');
  if (!existsSync(file)) {
    mkdirSync(config.stateDir, { recursive: true, mode: 0o700 });
    writeFileSync(file, `${randomBytes(32).toString('base64url')}\n`, { mode: 0o600, flag: 'wx' });
    log.info(
      { file },
      'generated an admin key; use it as the bearer key of the API (EGRESSD_ADMIN_KEY overrides it)',
    );
    console.error(`egressd: admin key written to ${file}`);
  }
  chmodSync(file, 0o600);
  return readFileSync(file, 'utf8').trim();
}

export async function serve(
  mode: ServeMode,
  config: EgressdConfig,
  env: Record<string, string | undefined>,
  /**
   * `egressd agent` started by `egressd all` (see agent-process.ts), or an
   * API worker (api-server.ts): reports to its parent, ends with it.
   */
  supervised = false,
) {
  // `auto` is decided here, once: the agent process of `egressd all` writes to the same stdout.
  const logFormat = resolveLogFormat(config.logFormat);
  const log = createLogger(config.logLevel, logFormat);
  const stoppers: Stopper[] = [];
  const stopAll = async () => {
    for (const stop of stoppers.reverse()) {
      try {
        await stop();
      } catch (err) {
        log.error({ err }, 'error while stopping');
      }
    }
  };
  let agentMetricsUrl = '';
  let embedded: EmbeddedRedis | undefined;
  let ready = false;
  if (supervised) {
    // A parent gone before this process is ready (the agent's first sync can wait on Redis for
    // long) would leave it running, holding the pin directory: end at once; the pins keep enforcing.
    process.once('disconnect', () => {
      if (ready) return;
      log.warn('the parent process ended before this one was ready: exiting');
      process.exit(1);
    });
  }
  try {
    let redisUrl = config.redisUrl;
    if (!redisUrl) {
      if (mode !== 'all') {
        throw new EgressdError(
          'REDIS_REQUIRED',
          `egressd ${mode} shares one Redis with the other hosts: give it with --redis or REDIS_URL (only "egressd all" embeds one)`,
        );
      }
      if (config.redisMinReplicas > 0) {
        throw new EgressdError(
          'BAD_CONFIG',
          `--redis-min-replicas / EGRESSD_REDIS_MIN_REPLICAS is ${config.redisMinReplicas}, but the embedded Redis of "egressd all" has no replica: every change would answer 503 replication_timeout. Give a Redis with replicas (--redis), or set it to 0`,
        );
      }
      const started = await EmbeddedRedis.start(config.stateDir, log);
      embedded = started;
      stoppers.push(() => started.stop());
      redisUrl = started.url;
    }

    if (mode === 'agent') {
      // Supervised, on an ephemeral loopback port that the parent's /metrics reads.
      agentMetricsUrl = await startAgent(
        config,
        redisUrl,
        log,
        stoppers,
        supervised ? '127.0.0.1:0' : undefined,
      );
    }

    let moreMetrics: (() => Promise<string>) | undefined;
    if (mode === 'all') {
      // The agent in a process of its own: API load never delays enforcement.
      const agent = await AgentProcess.start({ config: { ...config, logFormat }, redisUrl, env, log });
      stoppers.push(() => agent.stop());
      moreMetrics = () => agent.metricsText();
    }

    if (mode !== 'agent') {
      const apiConfig = hideSecrets({
        ...config,
        redisUrl,
        apiKey: '',
        adminKey: adminKey(config, log),
        defaultNode: mode === 'all' ? config.node : config.defaultNode,
        logFormat,
      });
      stoppers.push(await startApi(apiConfig, log, moreMetrics));
    }
  } catch (err) {
    await stopAll();
    throw err;
  }

  if (supervised) {
    ready = true;
    const stopped = supervisorStop(
      log,
      cluster.isWorker
        ? 'API worker stopping'
        : 'agent process stopping: pinned programs stay attached and keep enforcing',
    );
    await tellSupervisor({ type: 'ready', metrics: agentMetricsUrl });
    await stopped;
  } else {
    notifySystemd(env, log);
    console.error(`egressd ${mode}: running (node ${config.node}); stop with Ctrl-C or SIGTERM`);
    await new Promise<void>((resolve) => {
      const stop = (signal: string) => {
        embedded?.expectExit();
        log.info({ signal }, 'stopping: pinned programs stay attached and keep enforcing');
        resolve();
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
    });
  }
  await stopAll();
}

/**
 * The agent's parts: preflight, the pin-directory lock, the enforcer, the DNS
 * proxy, the agent itself, deny events and the metrics endpoint (on
 * `metricsListen`, default --metrics-listen). Resolves after the first resync
 * with the URL of the metrics; each part's stop function is on `stoppers`.
 */
async function startAgent(
  config: EgressdConfig,
  redisUrl: string,
  log: Logger,
  stoppers: Stopper[],
  metricsListen = config.metricsListen,
): Promise<string> {
  checkProxyAddressesLocal(config.dnsProxyAddresses);
  const store = new Store({ url: redisUrl });
  stoppers.push(() => store.close());
  // A Redis Cluster is refused before anything is loaded (every resync checks again, see Agent);
  // a Redis that cannot be reached now is not: the pins enforce while the agent retries.
  await store
    .connected(2000)
    .then(() => store.refuseCluster())
    .catch((err: unknown) => {
      if (err instanceof RedisClusterError) throw err;
    });
  const agentMetrics = createAgentMetrics();
  const { cgroupMount } = await preflight(config.bpffsDir);
  stoppers.push(await lockPinDir(config.bpffsDir));
  const enforcer = Enforcer.open({
    pinDir: config.bpffsDir,
    cgroupRoot: cgroupMount,
    internalCidrs: config.internalCidrs,
    revocation: config.revocation === 'on',
    observe: config.observe,
    log: (level, line) => log[level]({ libbpf: line }, 'libbpf'),
  });
  stoppers.push(() => enforcer.close());
  log.info(
    {
      pinDir: config.bpffsDir,
      adopted: enforcer.adopted,
      node: config.node,
      revocation: enforcer.revocation,
    },
    'BPF programs ready',
  );
  if (enforcer.revocation === 'unsupported') {
    log.warn(
      { reason: enforcer.revocationProblem },
      'live revocation unsupported: a policy change applies to new connections only (the PUT answers revocation "unsupported")',
    );
  }
  let agent: Agent | undefined;
  let events: ReturnType<typeof startDenyEvents> | undefined;
  let observer: Observer | undefined;
  const proxy = startDnsProxy(config, enforcer, log, agentMetrics, {
    onLearned: (...args) => agent?.learned(...args),
    onResolved: (...args) => observer?.resolved(...args),
    // The proxy's refusals take the kernel events' way: one rate limit per computer, one sink.
    onDenied: (denial) => events?.submit(denial),
  });
  stoppers.push(() => proxy.close());
  let status: NodeStatusPublisher | undefined;
  agent = new Agent({
    store,
    enforcer,
    node: config.node,
    cgroupRoot: cgroupMount,
    log,
    proxy,
    metrics: agentMetrics,
    roots: config.cgroupRoots,
    // This process's cgroup holds egressd (in `egressd all` the API and the embedded Redis too).
    protectedCgroups: [cgroupOfProcess() ?? ''],
    onRevoked: (id, socket) => events?.revoked(id, socket),
    storeIdFile: agentStoreIdFile(config.stateDir, config.node),
    onStoreState: () => void status?.publish(),
  });
  const deny = startDenyEvents(enforcer, store, log, agentMetrics);
  events = deny;
  stoppers.push(() => deny.close());
  const observing = new Observer(enforcer, store, log.child({ component: 'observer' }));
  observer = observing;
  observing.start();
  stoppers.push(() => observing.stop());
  // Said once the agent follows Redis (its first resync done), then every 15 s.
  const following = agent;
  const publisher = new NodeStatusPublisher(store, config.node, enforcer, log, () => following.storeState());
  status = publisher;
  stoppers.push(() => publisher.stop());
  const gauges = setInterval(() => {
    for (const [map, n] of Object.entries(enforcer.installedEntryCounts()))
      agentMetrics.mapEntries.set({ map }, n);
  }, 10_000).unref();
  stoppers.push(() => clearInterval(gauges));
  const { host, port } = parseListen(metricsListen);
  const metricsServer = await serveMetrics(agentMetrics.registry, host, port);
  stoppers.push(
    () =>
      new Promise<void>((resolve) => {
        metricsServer.close(() => resolve());
        // Scrapers keep their connections open (egressd all's /metrics does).
        metricsServer.closeAllConnections();
      }),
  );
  const bound = metricsServer.address() as AddressInfo;
  const running = agent;
  stoppers.push(() => running.stop());
  // Connection failures are retried inside the agent; pins enforce meanwhile.
  await running.start();
  publisher.start();
  return `http://${bound.family === 'IPv6' ? `[${bound.address}]` : bound.address}:${bound.port}/metrics`;
}

/** Where the agent of `node` remembers the id of the store it follows (daemon/agent/store-identity.ts). */
export function agentStoreIdFile(stateDir: string, node: string): string {
  return path.join(stateDir, `agent-${node}.store-id.json`);
}

/** The DNS proxy on loopback and the configured proxy addresses, forwarding to the configured upstreams. */
function startDnsProxy(
  config: EgressdConfig,
  enforcer: Enforcer,
  log: Logger,
  metrics: AgentMetrics,
  callbacks: Pick<DnsProxyOptions, 'onLearned' | 'onDenied' | 'onResolved'>,
): DnsProxy {
  const upstreams = config.dnsUpstreams.length > 0 ? config.dnsUpstreams : systemResolvers(readResolvConf());
  if (upstreams.length === 0) {
    throw new EgressdError(
      'NO_DNS_UPSTREAM',
      '/etc/resolv.conf names no nameserver: give the resolver to forward to with --dns-upstream / EGRESSD_DNS_UPSTREAM',
    );
  }
  const [min = 0, max = 0] = config.dnsPorts.split('-').map(Number);
  const proxyV4 = config.dnsProxyAddresses.find((a) => isIP(a) === 4);
  const proxyV6 = config.dnsProxyAddresses.find((a) => isIP(a) === 6);
  enforcer.setDnsConfig([min, max], proxyV4, proxyV6);
  return new DnsProxy({
    enforcer,
    upstreams: upstreams.map((u) => parseHostPort(u, 53)!),
    listen: ['127.0.0.1', '::1', ...config.dnsProxyAddresses],
    portRange: [min, max],
    ttlFloor: config.dnsTtlMin,
    ttlCeiling: config.dnsTtlMax,
    timeoutMs: 3000,
    log: log.child({ component: 'dns' }),
    metrics,
    ...callbacks,
  });
}

function readResolvConf(): string {
  try {
    return readFileSync('/etc/resolv.conf', 'utf8');
  } catch {
    return '';
  }
}

/**
 * Deny events, the kernel's and (submit) the DNS proxy's: one JSON log line
 * each, and batched into the computer's capped Redis stream.
 */
function startDenyEvents(
  enforcer: Enforcer,
  store: Store,
  log: Logger,
  metrics: AgentMetrics,
): { submit: DenyEvents['submit']; revoked: DenyEvents['revoked']; close(): void } {
  const eventLog = log.child({ component: 'deny' });
  let pending = new Map<string, DenyRecord[]>();
  const flush = async () => {
    const batch = pending;
    pending = new Map();
    for (const [id, records] of batch) {
      // Dropped by the store if the computer was deleted meanwhile (see Store.appendEvents).
      await store.appendEvents(id, records).catch((err: Error) => {
        eventLog.warn(
          { computer: id, lost: records.length, err: err.message },
          'deny events not stored (Redis)',
        );
      });
    }
  };
  const timer = setInterval(() => void flush(), 250).unref();
  const events = new DenyEvents({
    enforcer,
    metrics,
    sink: (record) => {
      eventLog.info({ event: record }, 'denied');
      pending.set(record.computer, [...(pending.get(record.computer) ?? []), record]);
    },
  });
  return {
    submit: (denial) => events.submit(denial),
    revoked: (id, socket) => events.revoked(id, socket),
    close() {
      clearInterval(timer);
      events.close();
      void flush();
    },
  };
}

/** Type=notify units: tell systemd we are ready (NotifyAccess=all lets systemd-notify do it). */
function notifySystemd(env: Record<string, string | undefined>, log: Logger): void {
  if (!env['NOTIFY_SOCKET']) return;
  execFile('systemd-notify', ['--ready', `--pid=${process.pid}`], (err) => {
    if (err) log.warn({ err: err.message }, 'systemd-notify failed');
  });
}
