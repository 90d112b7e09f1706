/**
 * One API under test: a real redis-server, a Store, the app on
 * 127.0.0.1:0, and helpers to call it. `close()` ends all of it.
 */
import { once } from 'node:events';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Client } from '../../api/client.js';
import type { ApiConfig } from '../../api/config.js';
import { openApiDocument } from '../../api/openapi.js';
import { type App, type AppOptions, createApp } from '../../api/routes/app.js';
import { type EgressdConfig, resolveEgressdConfig } from '../../cli/config.js';
import { Store } from '../../store/store.js';
import { startRedis, type TestRedis, type TestRedisOptions } from '../helpers/redis.js';
import { checkReply } from './openapi-check.js';

export const ADMIN_KEY = 'test-admin-key-0123456789';

export interface Harness {
  redis: TestRedis;
  store: Store;
  app: App;
  config: EgressdConfig;
  server: Server;
  baseUrl: string;
  /** api/client.ts's send() with the admin key unless `key` is given ('' for none). */
  call(method: string, path: string, options?: CallOptions): Promise<Reply>;
  close(): Promise<void>;
}

export interface CallOptions {
  body?: unknown;
  /** Raw body text (sent as is, with `contentType`). */
  raw?: string;
  contentType?: string;
  key?: string;
  headers?: Record<string, string>;
}

export interface Reply {
  status: number;
  headers: Headers;
  // biome-ignore lint/suspicious/noExplicitAny: replies are arbitrary JSON that tests pick apart
  body: any;
  text: string;
}

const DOC = openApiDocument();

/**
 * Every reply any API test gets is checked against the OpenAPI document: a
 * reply that does not conform fails the test that made the request.
 */
export async function startHarness(
  overrides: Partial<ApiConfig & Pick<EgressdConfig, 'redisMinReplicas' | 'redisReplicaTimeoutMs'>> = {},
  appOptions: Pick<AppOptions, 'logger' | 'uiDir' | 'streams'> = {},
  redisOptions: TestRedisOptions = {},
  /** The URL the Store and the configuration use, made once Redis is up (a Sentinel URL); default its own. */
  storeUrl: (redis: TestRedis) => Promise<string> = async (redis) => redis.url,
): Promise<Harness> {
  const redis = await startRedis(redisOptions);
  const url = await storeUrl(redis).catch(async (err) => {
    await redis.cleanup();
    throw err;
  });
  const config = Object.assign(
    resolveEgressdConfig(
      {},
      { EGRESSD_ADMIN_KEY: ADMIN_KEY, REDIS_URL: url, EGRESSD_DEFAULT_NODE: 'node-a' },
    ),
    // Sandbox root '' (any cgroup): most API tests are not about roots; those that are say so.
    { cgroupRoots: [''] },
    overrides,
  );
  // As cli/api-server.ts makes it.
  const store = new Store({
    url: config.redisUrl,
    streamMaxLen: config.streamMaxLen,
    waitPollMs: 200,
    minReplicas: config.redisMinReplicas,
    replicaTimeoutMs: config.redisReplicaTimeoutMs,
  });
  await store.connect();
  const app = createApp({ store, config, ...appOptions });
  const server = app.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const client = new Client({ baseUrl, apiKey: ADMIN_KEY });
  const call = async (method: string, path: string, options: CallOptions = {}): Promise<Reply> => {
    const headers: Record<string, string> = { ...options.headers };
    if (options.contentType !== undefined) headers['content-type'] = options.contentType;
    const r = await client.send(method, path, {
      headers,
      apiKey: options.key,
      ...(options.raw === undefined ? { body: options.body } : { rawBody: options.raw }),
    });
    const problems = checkReply(DOC, method, path, r.status, r.headers.get('content-type'), r.body);
    if (problems.length > 0)
      throw new Error(`reply does not conform to the OpenAPI document: ${problems.join('; ')}`);
    return { status: r.status, headers: r.headers, body: r.body, text: r.text };
  };
  return {
    redis,
    store,
    app,
    config,
    server,
    baseUrl,
    call,
    close: async () => {
      server.closeAllConnections();
      server.close();
      await store.close();
      await redis.cleanup();
    },
  };
}

/** Registers a computer through the API (admin key unless given). */
export async function register(h: Harness, id: string, body: Record<string, unknown> = {}, key?: string) {
  const r = await h.call('PUT', `/api/v1/computers/${id}`, {
    body: { cgroup: `egressd/${id}`, ...body },
    ...(key === undefined ? {} : { key }),
  });
  if (r.status !== 201 && r.status !== 200) throw new Error(`register ${id}: ${r.status} ${r.text}`);
  return r.body.data;
}
