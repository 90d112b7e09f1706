/** The API's process: resolves config, connects to Redis, listens. The only module that listens. */
import { pino } from 'pino';
import { createApp } from './app.js';
import { parseListen, resolveConfig } from './config.js';
import { Store } from './store/store.js';

export async function main(): Promise<void> {
  const config = resolveConfig();
  const logger = pino({ level: config.logLevel });
  if (config.adminKey === '') logger.warn('EGRESSD_ADMIN_KEY is not set: only tenant keys are accepted');
  const store = new Store({ url: config.redisUrl, streamMaxLen: config.streamMaxLen });
  await store.connect();
  const app = createApp({ store, config, logger });
  const { host, port } = parseListen(config.listen);
  const server = app.listen(port, host, () =>
    logger.info({ listen: config.listen }, 'egressd API listening'),
  );
  server.keepAliveTimeout = 65_000;
  const stop = () => {
    logger.info('stopping');
    server.close(() => void store.close());
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
