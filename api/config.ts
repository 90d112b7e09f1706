/**
 * The API's options: one typed interface, one DEFAULT object, resolved once
 * at start (argument, then environment, then default). No other module of
 * the API reads process.env.
 */
export interface ApiConfig {
  /**
   * host:port to listen on.
   * @default '127.0.0.1:8080' (env EGRESSD_API_LISTEN)
   */
  listen: string;
  /**
   * Redis URL (`redis://host:port/db` or `unix:///path/to/socket`).
   * @default 'redis://127.0.0.1:6379' (env REDIS_URL)
   */
  redisUrl: string;
  /**
   * The admin bearer key; '' disables admin access. Non-enumerable, so it
   * never shows up when the config is logged or spread.
   * @default '' (env EGRESSD_ADMIN_KEY)
   */
  adminKey: string;
  /**
   * Node that a computer registered without `node` is placed on; '' means
   * none (then `node` is required). The single-host setup passes its host name.
   * @default '' (env EGRESSD_DEFAULT_NODE)
   */
  defaultNode: string;
  /**
   * Sandbox roots: cgroup subtrees (relative to the cgroup2 mount) that
   * computers must lie strictly below; a tenant key's cgroup prefix lies
   * below one too (default `<first root>/<tenant>`). Give the agents' roots
   * (`egressd all` passes its own). '' (no root) accepts any cgroup: only for
   * tests of the API alone; agents still refuse cgroups outside their roots.
   * @default ['egressd'] (env EGRESSD_CGROUP_ROOTS, comma-separated)
   */
  cgroupRoots: string[];
  /**
   * How long PUT and DELETE of a policy wait for the agent's acknowledgement
   * when the request has no `?wait=`.
   * @default 5000 (env EGRESSD_WAIT_TIMEOUT_MS)
   */
  waitTimeoutMs: number;
  /**
   * Largest `?wait=` (milliseconds) a request may ask for.
   * @default 60000 (env EGRESSD_MAX_WAIT_MS)
   */
  maxWaitMs: number;
  /**
   * Largest request body, in bytes (413 beyond).
   * @default 1048576 (env EGRESSD_BODY_LIMIT)
   */
  bodyLimitBytes: number;
  /**
   * Most rules in one policy.
   * @default 10000 (env EGRESSD_MAX_RULES)
   */
  maxRules: number;
  /**
   * Approximate cap (XADD MAXLEN ~) of each node's change stream. An agent
   * that falls further behind than this resynchronises fully.
   * @default 10000 (env EGRESSD_STREAM_MAXLEN)
   */
  streamMaxLen: number;
  /**
   * Processes serving requests (node:cluster; the API is stateless, so they
   * share nothing but Redis). 1 serves in the main process.
   * @default 1 (env EGRESSD_API_WORKERS)
   */
  workers: number;
  /**
   * Most event streams (`GET .../network-policy/events/stream`) that one API
   * key may hold open in one process; the admin key counts as one key.
   * Beyond it: 429 too_many_streams. 0 refuses every stream.
   * @default 20 (env EGRESSD_SSE_PER_KEY)
   */
  ssePerKey: number;
  /**
   * Most event streams one process holds open, all keys together. Beyond it:
   * 503 streams_at_capacity. Each stream holds a socket: the process's
   * open-files limit should be at least 2 × this + 1024 (checked at start).
   * @default 2000 (env EGRESSD_SSE_MAX)
   */
  sseMax: number;
  /**
   * pino log level.
   * @default 'info' (env EGRESSD_LOG_LEVEL)
   */
  logLevel: string;
}

export const DEFAULT_API_CONFIG: Readonly<ApiConfig> = Object.freeze({
  listen: '127.0.0.1:8080',
  redisUrl: 'redis://127.0.0.1:6379',
  adminKey: '',
  defaultNode: '',
  cgroupRoots: ['egressd'],
  waitTimeoutMs: 5000,
  maxWaitMs: 60_000,
  bodyLimitBytes: 1024 * 1024,
  maxRules: 10_000,
  streamMaxLen: 10_000,
  workers: 1,
  ssePerKey: 20,
  sseMax: 2000,
  logLevel: 'info',
});

const ENV: Record<keyof ApiConfig, string> = {
  listen: 'EGRESSD_API_LISTEN',
  redisUrl: 'REDIS_URL',
  adminKey: 'EGRESSD_ADMIN_KEY',
  defaultNode: 'EGRESSD_DEFAULT_NODE',
  cgroupRoots: 'EGRESSD_CGROUP_ROOTS',
  waitTimeoutMs: 'EGRESSD_WAIT_TIMEOUT_MS',
  maxWaitMs: 'EGRESSD_MAX_WAIT_MS',
  bodyLimitBytes: 'EGRESSD_BODY_LIMIT',
  maxRules: 'EGRESSD_MAX_RULES',
  streamMaxLen: 'EGRESSD_STREAM_MAXLEN',
  workers: 'EGRESSD_API_WORKERS',
  ssePerKey: 'EGRESSD_SSE_PER_KEY',
  sseMax: 'EGRESSD_SSE_MAX',
  logLevel: 'EGRESSD_LOG_LEVEL',
};

export class ConfigError extends Error {}

/** Resolves the config: `overrides`, then `env`, then DEFAULT_API_CONFIG. */
export function resolveConfig(
  overrides: Partial<ApiConfig> = {},
  env: Record<string, string | undefined> = process.env,
): ApiConfig {
  const out = {} as Record<string, unknown>;
  for (const name of Object.keys(DEFAULT_API_CONFIG) as (keyof ApiConfig)[]) {
    const fallback = DEFAULT_API_CONFIG[name];
    const given = overrides[name];
    const fromEnv = env[ENV[name]];
    let value: unknown = fallback;
    if (given !== undefined) value = given;
    else if (fromEnv !== undefined && fromEnv !== '') {
      value =
        typeof fallback === 'number'
          ? parseCount(fromEnv, ENV[name])
          : Array.isArray(fallback)
            ? fromEnv
                .split(',')
                .map((s) => s.trim())
                .filter(Boolean)
            : fromEnv;
    }
    out[name] = value;
  }
  const config = out as unknown as ApiConfig;
  if (!/^[^:]*:\d+$|^\[[0-9a-fA-F:.]+\]:\d+$/.test(config.listen)) {
    throw new ConfigError(`listen "${config.listen}" must be host:port, for example 127.0.0.1:8080`);
  }
  if (config.workers < 1) throw new ConfigError('workers must be at least 1');
  config.cgroupRoots = config.cgroupRoots.map((r) => r.replace(/^\/+/, '').replace(/\/+$/, ''));
  if (config.cgroupRoots.length === 0) {
    throw new ConfigError(
      'cgroupRoots (EGRESSD_CGROUP_ROOTS): give at least one sandbox root, for example egressd',
    );
  }
  const adminKey = config.adminKey;
  Object.defineProperty(config, 'adminKey', { value: adminKey, enumerable: false, writable: false });
  return config;
}

function parseCount(text: string, name: string): number {
  if (!/^\d+$/.test(text)) throw new ConfigError(`${name}="${text}" must be a non-negative integer`);
  return Number(text);
}

/** Splits `listen` into host and port. */
export function parseListen(listen: string): { host: string; port: number } {
  const at = listen.lastIndexOf(':');
  const host = listen.slice(0, at).replace(/^\[|\]$/g, '');
  return { host: host === '' ? '127.0.0.1' : host, port: Number(listen.slice(at + 1)) };
}
