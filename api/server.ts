/**
 * The API's process: resolves config, connects to Redis, listens. The only
 * module that listens. With `workers` > 1, a primary forks that many
 * worker processes (node:cluster) that share the listening socket, and
 * replaces any that dies.
 */
import cluster from 'node:cluster';
import { pino } from 'pino';
import { Store } from '../store/store.js';
import { createApp } from './app.js';
import { type ApiConfig, parseListen, resolveConfig } from './config.js';
import { checkFdBudget } from './fd-budget.js';

export async function main(): Promise<void> {
  const config = resolveConfig();
  const logger = pino({ level: config.logLevel });
  // Workers inherit the limit: checked once.
  const budget = checkFdBudget(config.sseMax);
  if (!budget.ok) logger.warn({ limit: budget.limit, needed: budget.needed }, budget.message);
  if (config.workers > 1 && cluster.isPrimary) {
    runPrimary(config, logger);
    return;
  }
  await serve(config, logger);
}

function runPrimary(config: ApiConfig, logger: pino.Logger): void {
  let stopping = false;
  for (let i = 0; i < config.workers; i++) cluster.fork();
  cluster.on('exit', (worker, code, signal) => {
    if (stopping) {
      if (Object.keys(cluster.workers ?? {}).length === 0) process.exit(0);
      return;
    }
    logger.error({ pid: worker.process.pid, code, signal }, 'API worker died; starting another');
    cluster.fork();
  });
  const stop = () => {
    stopping = true;
    for (const worker of Object.values(cluster.workers ?? {})) worker?.process.kill('SIGTERM');
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

async function serve(config: ApiConfig, logger: pino.Logger): Promise<void> {
  if (config.adminKey === '' && cluster.isPrimary) {
    logger.warn('EGRESSD_ADMIN_KEY is not set: only tenant keys are accepted');
  }
  const store = new Store({ url: config.redisUrl, streamMaxLen: config.streamMaxLen });
  try {
    await store.connect();
  } catch (err) {
    logger.warn({ err }, 'Redis is unreachable: answering 503 until it is back');
  }
  const app = createApp({ store, config, logger });
  const { host, port } = parseListen(config.listen);
  const server = app.listen(port, host, () =>
    logger.info({ listen: config.listen, pid: process.pid }, 'API listening'),
  );
  server.keepAliveTimeout = 65_000;
  const stop = () => {
    server.close(() => {
      void store.close().then(() => process.exit(0));
    });
    server.closeAllConnections();
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().catch((err: unknown) => {
    console.error(`egressd api: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  });
}
