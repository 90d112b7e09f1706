/**
 * The API as a Koa app. `createApp` only builds; `server.ts` listens. Tests
 * drive `app.callback()` through an http server on 127.0.0.1:0.
 */
import Router from '@koa/router';
import Koa from 'koa';
import { type Logger, pino } from 'pino';
import { Authenticator } from './auth.js';
import type { ApiConfig } from './config.js';
import { ApiError, StoreUnavailableError } from './errors.js';
import { type ApiMetrics, createMetrics } from './metrics.js';
import { computerRoutes } from './routes/computers.js';
import type { ApiState, RouteDeps } from './routes/deps.js';
import { healthRoutes } from './routes/health.js';
import { keyRoutes } from './routes/keys.js';
import { policyRoutes } from './routes/policy.js';
import type { Store } from './store/store.js';

export interface AppOptions {
  store: Store;
  config: ApiConfig;
  /** @default a silent logger */
  logger?: Logger;
  /** @default metrics in a registry of their own */
  metrics?: ApiMetrics;
  /**
   * More Prometheus text that /metrics appends to the API's own (`egressd
   * all`: its agent process's metrics); '' adds nothing.
   */
  moreMetrics?: () => Promise<string>;
}

export interface App extends Koa<ApiState> {
  /** The router, so that tests can walk its routes. */
  router: Router<ApiState>;
  metrics: ApiMetrics;
}

export function createApp(options: AppOptions): App {
  const { store, config } = options;
  const logger = options.logger ?? pino({ level: 'silent' });
  const metrics = options.metrics ?? createMetrics();
  const app = new Koa<ApiState>() as App;
  app.proxy = false;
  const deps: RouteDeps = {
    store,
    config,
    authenticator: new Authenticator(store, config.adminKey),
    metrics,
  };

  let lastUnavailableLog = 0;
  const router = new Router<ApiState>();
  healthRoutes(router, deps, metrics, options.moreMetrics);
  policyRoutes(router, deps);
  computerRoutes(router, deps);
  keyRoutes(router, deps);

  app.use(async (ctx, next) => {
    const started = process.hrtime.bigint();
    try {
      await next();
      if (ctx.body === undefined || ctx.body === null) {
        if (ctx.status === 404) {
          throw new ApiError(
            404,
            'not_found',
            `no such endpoint: ${ctx.method} ${ctx.path}; see /api/v1/openapi.json`,
          );
        }
        if (ctx.status === 405) {
          throw new ApiError(
            405,
            'method_not_allowed',
            `${ctx.method} is not allowed here; use ${ctx.response.get('Allow')}`,
          );
        }
        if (ctx.status === 501) {
          throw new ApiError(501, 'not_implemented', `the HTTP method ${ctx.method} is not supported`);
        }
      }
    } catch (err) {
      const e = toApiError(err);
      if (e instanceof StoreUnavailableError) {
        metrics.storeUnavailable.inc();
        // At most one line a second while Redis is away (the metric counts them all).
        const now = Date.now();
        if (now - lastUnavailableLog >= 1000) {
          lastUnavailableLog = now;
          logger.warn({ method: ctx.method, path: ctx.path }, e.message);
        }
      } else if (e.status >= 500) {
        logger.error({ err, method: ctx.method, path: ctx.path }, e.message);
      }
      ctx.status = e.status;
      ctx.body = {
        error: { code: e.code, message: e.message, ...(e.details ? { details: e.details } : {}) },
      };
      if (e.status === 503) ctx.set('Retry-After', '1');
    }
    const route = (ctx as { _matchedRoute?: string })._matchedRoute ?? 'unmatched';
    metrics.requests.inc({ method: ctx.method, route, status: String(ctx.status) });
    metrics.duration.observe({ method: ctx.method, route }, Number(process.hrtime.bigint() - started) / 1e9);
  });
  app.use(router.routes());
  // Without `throw`, the router answers 405 (with Allow) and 501 itself; the first middleware adds the body.
  app.use(router.allowedMethods());
  app.router = router;
  app.metrics = metrics;
  // Koa reports errors after the response started here: a client leaving an event stream is no error.
  app.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'ERR_STREAM_PREMATURE_CLOSE' || err.code === 'ECONNRESET') return;
    logger.error({ err }, 'error after the response started');
  });
  return app;
}

function toApiError(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  // Koa's own errors (for example a client that sent a malformed request).
  const status = (err as { status?: unknown })?.status;
  if (typeof status === 'number' && status >= 400 && status < 500) {
    return new ApiError(status, 'invalid_request', (err as Error).message);
  }
  return new ApiError(500, 'internal', 'internal error; the API logged it', undefined, { cause: err });
}
