/**
 * The API's one serving path, for `egressd all` and `egressd api`. With
 * --api-workers 1 the API serves in this process. With N > 1 this process
 * forks N workers (node:cluster: they share the listening socket; the API
 * is stateless, so they share nothing else but Redis) and replaces any that
 * dies. Each worker is `egressd api` with this process's configuration in
 * its environment (as the agent process gets it, agent-process.ts): the
 * Redis this process uses, the admin key it resolved, its default node. A
 * worker says when it listens or why it could not, as the agent does
 * (tellSupervisor), ends with this process (the cluster channel), and asks
 * it for the agent's metrics that `egressd all` appends to /metrics.
 */
import cluster, { type Worker } from 'node:cluster';
import type { Server } from 'node:http';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { checkFdBudget } from '../api/fd-budget.js';
import { createMetrics } from '../api/metrics.js';
import { createApp } from '../api/routes/app.js';
import { EgressdError } from '../policy/errors.js';
import { Store } from '../store/store.js';
import type { AgentMessage } from './agent-process.js';
import { configEnvironment, type EgressdConfig, parseListen } from './config.js';

/** A stop function per started part. */
export type Stopper = () => Promise<void> | void;

/** Worker ↔ primary, besides AgentMessage's ready and failed: the agent's metrics. */
type MetricsRequest = { type: 'agent-metrics?'; id: number };
type MetricsReply = { type: 'agent-metrics'; id: number; text: string };

const CLI = fileURLToPath(new URL('./main.js', import.meta.url));
const STOP_TIMEOUT_MS = 10_000;
const METRICS_TIMEOUT_MS = 3000;

/**
 * Serves the API of `config` (redisUrl, adminKey and defaultNode resolved
 * by the caller); resolves once it listens, with its stop function.
 * `moreMetrics`: appended to /metrics (egressd all: the agent's).
 */
export async function startApi(
  config: EgressdConfig,
  log: Logger,
  moreMetrics?: () => Promise<string>,
): Promise<Stopper> {
  if (cluster.isWorker) return listen(config, log, agentMetricsOfPrimary);
  // Workers inherit the limit: checked once.
  const budget = checkFdBudget(config.sseMax);
  if (!budget.ok) log.warn({ limit: budget.limit, needed: budget.needed }, budget.message);
  if (config.workers === 1) return listen(config, log, moreMetrics);
  return startWorkers(config, log, moreMetrics);
}

/** The API in this process: a Store, the app, the listening socket. */
async function listen(
  config: EgressdConfig,
  log: Logger,
  moreMetrics: (() => Promise<string>) | undefined,
): Promise<Stopper> {
  const store = new Store({
    url: config.redisUrl,
    streamMaxLen: config.streamMaxLen,
    minReplicas: config.redisMinReplicas,
    replicaTimeoutMs: config.redisReplicaTimeoutMs,
  });
  try {
    await store.connect();
    await keepStoreIdentity(store, log);
  } catch (err) {
    await store.close();
    throw err;
  }
  const app = createApp({
    store,
    config,
    logger: log.child({ component: 'api' }),
    metrics: createMetrics(),
    ...(moreMetrics ? { moreMetrics } : {}),
  });
  const { host, port } = parseListen(config.listen);
  let server: Server;
  try {
    server = await new Promise((resolve, reject) => {
      const s = app.listen(port, host, () => resolve(s));
      s.once('error', (err: NodeJS.ErrnoException) =>
        reject(
          new EgressdError(
            'LISTEN_FAILED',
            `cannot listen on ${config.listen} (${err.code}): choose another --listen / EGRESSD_LISTEN`,
          ),
        ),
      );
    });
  } catch (err) {
    await store.close();
    throw err;
  }
  // Longer than the usual 60 s idle timeout of load balancers, so that they close first.
  server.keepAliveTimeout = 65_000;
  log.info({ listen: config.listen }, 'API listening');
  return async () => {
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
    await store.close();
  };
}

/**
 * Makes the store's identity when it has none (store/identity.ts), now and
 * after every reconnect: a Redis that came back empty gets a new one, which
 * agents that followed the lost store see as another store (store_lost).
 * Never fails the API: a failure (no replica in time, Redis away) is logged
 * and tried again a second later, up to 10 times (then at the next
 * reconnect; an agent that never followed a store and an accept make it too).
 */
async function keepStoreIdentity(store: Store, log: Logger): Promise<void> {
  let known: string | undefined;
  const ensure = async (tries: number): Promise<void> => {
    try {
      const identity = await store.ensureStoreIdentity();
      if (known !== undefined && identity.id !== known)
        log.warn({ store: identity.id, was: known }, 'the store is another one since the reconnect');
      else if (known === undefined) log.info({ store: identity.id }, 'store identity');
      known = identity.id;
    } catch (err) {
      log.warn({ err: (err as Error).message, tries }, 'store identity not checked');
      if (tries < 10) setTimeout(() => void ensure(tries + 1), 1000).unref();
    }
  };
  store.onReady(() => void ensure(1));
  await ensure(1);
}

/** The primary's side: forks the workers, resolves when every one listens, replaces any that dies later. */
async function startWorkers(
  config: EgressdConfig,
  log: Logger,
  moreMetrics: (() => Promise<string>) | undefined,
): Promise<Stopper> {
  const env = {
    ...configEnvironment(config),
    EGRESSD_ADMIN_KEY: config.adminKey,
    // Left out (undefined is not passed on): systemd's notifications are the primary's; no client key.
    NOTIFY_SOCKET: undefined,
    EGRESSD_API_KEY: undefined,
  };
  cluster.setupPrimary({ exec: CLI, args: ['api'], execArgv: process.execArgv });
  let stopping = false;
  let restarts = 0;
  let restartTimer: NodeJS.Timeout | undefined;
  const restartLater = (detail: object, msg: string) => {
    const delay = Math.min(100 * 2 ** restarts++, 5000);
    log.error({ ...detail, restartInMs: delay }, msg);
    restartTimer = setTimeout(() => {
      if (stopping) return;
      fork().catch((err: Error) => {
        if (!stopping) restartLater({ err: err.message }, 'API worker did not start again');
      });
    }, delay);
  };
  const fork = () =>
    new Promise<void>((resolve, reject) => {
      const worker = cluster.fork(env);
      let ready = false;
      let failure: { code: string; message: string } | undefined;
      worker.on('message', (m: AgentMessage | MetricsRequest) => {
        if (m.type === 'failed') failure = m;
        if (m.type === 'agent-metrics?') void answerMetrics(worker, m.id, moreMetrics);
        if (m.type !== 'ready' || ready) return;
        ready = true;
        restarts = 0;
        resolve();
      });
      worker.once('exit', (code, signal) => {
        if (!ready) {
          reject(
            new EgressdError(
              failure?.code ?? 'API_START_FAILED',
              failure?.message ??
                `an API worker exited (${signal ?? `code ${code}`}) before it listened; see its log above`,
            ),
          );
          return;
        }
        if (!stopping)
          restartLater({ pid: worker.process.pid, code, signal }, 'API worker died; starting another');
      });
    });
  const stop = async () => {
    stopping = true;
    clearTimeout(restartTimer);
    await Promise.all(Object.values(cluster.workers ?? {}).map((w) => (w ? stopWorker(w) : undefined)));
  };
  try {
    await Promise.all(Array.from({ length: config.workers }, fork));
  } catch (err) {
    await stop();
    throw err;
  }
  log.info({ listen: config.listen, workers: config.workers }, 'API listening');
  return stop;
}

async function answerMetrics(worker: Worker, id: number, moreMetrics?: () => Promise<string>): Promise<void> {
  const text = (await moreMetrics?.().catch(() => '')) ?? '';
  if (worker.isConnected()) worker.send({ type: 'agent-metrics', id, text } satisfies MetricsReply);
}

/** SIGTERM, SIGKILL after 10 s. */
async function stopWorker(worker: Worker): Promise<void> {
  const child = worker.process;
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => worker.once('exit', r));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
  await exited;
  clearTimeout(timer);
}

/** A worker's side of /metrics: the primary's agent metrics ('' from `egressd api`, or after 3 s). */
const waiting = new Map<number, (text: string) => void>();
let lastRequest = 0;
function agentMetricsOfPrimary(): Promise<string> {
  if (waiting.size === 0) process.on('message', onMetricsReply);
  return new Promise((resolve) => {
    const id = ++lastRequest;
    const timer = setTimeout(() => done(''), METRICS_TIMEOUT_MS);
    const done = (text: string) => {
      clearTimeout(timer);
      waiting.delete(id);
      if (waiting.size === 0) process.off('message', onMetricsReply);
      resolve(text);
    };
    waiting.set(id, done);
    process.send?.({ type: 'agent-metrics?', id } satisfies MetricsRequest);
  });
}

function onMetricsReply(m: MetricsReply): void {
  if (m?.type === 'agent-metrics') waiting.get(m.id)?.(m.text);
}
