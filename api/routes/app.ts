/**
 * The API as a Koa app. `createApp` only builds; `server.ts` listens. Tests
 * drive it through `app.createServer()` (an http server with the app's
 * handler for requests Node's parser refuses) on 127.0.0.1:0.
 */
import { createServer, type IncomingMessage, type Server, STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';
import Router from '@koa/router';
import Koa from 'koa';
import { type Logger, pino } from 'pino';
import { PolicyError } from '../../policy/errors.js';
import { StoreOutcomeUnknownError, StoreUnavailableError } from '../../store/errors.js';
import type { Store } from '../../store/store.js';
import { Authenticator } from '../auth.js';
import type { ApiConfig } from '../config.js';
import { ApiError, invalidPolicy, storeUnavailable } from '../errors.js';
import { type ApiMetrics, createMetrics } from '../metrics.js';
import { UiSessions } from '../session.js';
import { EventStreams, type EventStreamsOptions } from '../streams.js';
import { computerRoutes } from './computers.js';
import type { ApiState, RouteDeps } from './deps.js';
import { healthRoutes } from './health.js';
import { keyRoutes } from './keys.js';
import { policyRoutes } from './policy.js';
import { serviceRoutes } from './service.js';
import { storeRoutes } from './store.js';
import { uiRoutes } from './ui.js';
import { DEFAULT_UI_DIR, loadAssets, uiAssets } from './ui-assets.js';

export interface AppOptions {
  store: Store;
  config: ApiConfig;
  /** @default a silent logger */
  logger?: Logger;
  /** @default metrics in a registry of their own */
  metrics?: ApiMetrics;
  /** @default EventStreams' own defaults (key re-check every 10 s, heartbeat every 15 s, 64 KiB backlog) */
  streams?: Pick<EventStreamsOptions, 'keyCheckMs' | 'heartbeatMs' | 'maxBacklogBytes'>;
  /**
   * More Prometheus text that /metrics appends to the API's own (`egressd
   * all`: its agent process's metrics); '' adds nothing.
   */
  moreMetrics?: () => Promise<string>;
  /** The dashboard's built files (with config.ui 'on'). @default dist/ui */
  uiDir?: string;
}

export interface App extends Koa<ApiState> {
  /** The router, so that tests can walk its routes. */
  router: Router<ApiState>;
  metrics: ApiMetrics;
  /** The open event streams. */
  streams: EventStreams;
  /**
   * An http server for the app that also answers, with the JSON error body,
   * what never reaches Koa: requests Node's parser refuses (an unknown
   * method, malformed syntax) and CONNECT. `listen()` uses it.
   */
  createServer(): Server;
}

export function createApp(options: AppOptions): App {
  const { store, config } = options;
  const logger = options.logger ?? pino({ level: 'silent' });
  const metrics = options.metrics ?? createMetrics();
  const app = new Koa<ApiState>() as App;
  app.proxy = false;
  const streams = new EventStreams({
    ...options.streams,
    perKey: config.ssePerKey,
    max: config.sseMax,
    keyExists: async (keyId) => (await store.getApiKey(keyId)) !== undefined,
    sessionExists: (idHash) => store.sessionExists(idHash),
    metrics,
  });
  // A key revoked through any API process ends its streams here too.
  store.onKeyRevoked((keyId) => (keyId === undefined ? void streams.checkKeys() : streams.revoke(keyId)));
  const authenticator = new Authenticator(store, config.adminKey);
  const sessions =
    config.ui === 'on'
      ? new UiSessions(store, authenticator, {
          idleMs: config.uiSessionIdle * 1000,
          maxMs: config.uiSessionMax * 1000,
        })
      : undefined;
  const deps: RouteDeps = { store, config, authenticator, metrics, streams, sessions };

  let lastUnavailableLog = 0;
  const router = new Router<ApiState>();
  healthRoutes(router, deps, metrics, options.moreMetrics);
  policyRoutes(router, deps);
  computerRoutes(router, deps);
  keyRoutes(router, deps);
  serviceRoutes(router, deps);
  storeRoutes(router, deps);
  if (sessions) uiRoutes(router, sessions, logger);

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
          const allow = ctx.response.get('Allow');
          throw new ApiError(
            501,
            'not_implemented',
            `the HTTP method ${ctx.method} is not supported${allow ? `; use ${allow}` : ''}`,
          );
        }
      }
    } catch (err) {
      const e = toApiError(err);
      if (e.code === 'internal') {
        logger.error({ err, method: ctx.method, path: ctx.path }, e.message);
      } else if (err instanceof StoreUnavailableError) {
        metrics.storeUnavailable.inc();
        if (err instanceof StoreOutcomeUnknownError) metrics.storeOutcomeUnknown.inc();
        // At most one line a second while Redis is away (the metrics count them all).
        const now = Date.now();
        if (now - lastUnavailableLog >= 1000) {
          lastUnavailableLog = now;
          logger.warn({ method: ctx.method, path: ctx.path, code: e.code }, e.message);
        }
      } else {
        // The client's doing (4xx, and 501 for a method no route takes): no stack, no alarm.
        logger.debug({ method: ctx.method, path: ctx.path, status: e.status, code: e.code }, e.message);
      }
      ctx.status = e.status;
      ctx.body = {
        error: { code: e.code, message: e.message, ...(e.details ? { details: e.details } : {}) },
      };
      if (e.retryAfter !== undefined) ctx.set('Retry-After', String(e.retryAfter));
    }
    const route = (ctx as { _matchedRoute?: string })._matchedRoute ?? ctx.state.route ?? 'unmatched';
    metrics.requests.inc({ method: ctx.method, route, status: String(ctx.status) });
    metrics.duration.observe({ method: ctx.method, route }, Number(process.hrtime.bigint() - started) / 1e9);
  });
  if (sessions) {
    const uiDir = options.uiDir ?? DEFAULT_UI_DIR;
    const assets = loadAssets(uiDir);
    if (!assets.has('index.html')) {
      logger.warn(
        { uiDir },
        'the dashboard is not built (no index.html): /ui/ answers 404; run npm run build',
      );
    }
    app.use(uiAssets(assets));
  }
  app.use(router.routes());
  // Without `throw`, the router answers 405 (with Allow) and 501 itself; the first middleware adds the body.
  app.use(router.allowedMethods());
  app.router = router;
  app.metrics = metrics;
  app.streams = streams;
  app.createServer = () => {
    const server = createServer(app.callback());
    server.on('clientError', (err: ParserError, socket: Duplex) => {
      const reply = clientErrorReply(err);
      // A reset or a socket that cannot take a reply, or a response already under way on it
      // (the parser failed on a pipelined request): nothing to answer (as Node does itself).
      const inFlight = (socket as { _httpMessage?: { headersSent?: boolean } })._httpMessage;
      if (!reply || !socket.writable || inFlight?.headersSent) {
        socket.destroy();
        return;
      }
      logger.debug({ status: reply.status, parserError: err.code }, reply.message);
      metrics.requests.inc({ method: 'unparsed', route: 'unmatched', status: String(reply.status) });
      rawReply(socket, reply);
    });
    // CONNECT never reaches Koa (Node hands the socket to 'connect' listeners, or drops it).
    server.on('connect', (req: IncomingMessage, socket: Duplex) => {
      const reply = {
        status: 501,
        code: 'not_implemented',
        message: 'the HTTP method CONNECT is not supported: this is no proxy',
      };
      logger.debug({ method: req.method, path: req.url, status: reply.status }, reply.message);
      metrics.requests.inc({ method: 'CONNECT', route: 'unmatched', status: String(reply.status) });
      rawReply(socket, reply);
    });
    return server;
  };
  app.listen = ((...args: Parameters<Server['listen']>) =>
    app.createServer().listen(...args)) as App['listen'];
  // Koa reports errors after the response started here: a client leaving an event stream is no error.
  app.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'ERR_STREAM_PREMATURE_CLOSE' || err.code === 'ECONNRESET') return;
    logger.error({ err }, 'error after the response started');
  });
  return app;
}

/** What Node's HTTP parser reports to 'clientError'. */
type ParserError = NodeJS.ErrnoException & { rawPacket?: Buffer; reason?: string };

interface RawReply {
  status: number;
  code: string;
  message: string;
}

/** The answer to a request Node's parser refused; undefined when there is no one to answer. */
function clientErrorReply(err: ParserError): RawReply | undefined {
  switch (err.code) {
    case 'ECONNRESET':
    case 'EPIPE':
      return undefined;
    case 'HPE_INVALID_METHOD': {
      // The method as sent, shown only if it looks like one (a token of up to 32 characters).
      const sent = /^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}(?= )/.exec(
        err.rawPacket?.toString('latin1') ?? '',
      )?.[0];
      return {
        status: 501,
        code: 'not_implemented',
        message:
          `the HTTP method ${sent === undefined ? '' : `${sent} `}is not supported; ` +
          'this API takes GET, HEAD, PUT, POST and DELETE (see /api/v1/openapi.json)',
      };
    }
    case 'HPE_HEADER_OVERFLOW':
      return {
        status: 431,
        code: 'invalid_request',
        message: "the request's headers are larger than this server takes: send fewer or shorter ones",
      };
    case 'HPE_CHUNK_EXTENSIONS_OVERFLOW':
      return { status: 413, code: 'payload_too_large', message: 'chunk extensions too large' };
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return { status: 408, code: 'invalid_request', message: 'the request did not arrive in time' };
    default:
      return {
        status: 400,
        code: 'invalid_request',
        message: `malformed HTTP request (${err.code ?? 'parse error'}${err.reason ? `: ${err.reason}` : ''})`,
      };
  }
}

/** Writes a whole HTTP/1.1 response with the JSON error body to a socket Koa never saw, and closes it. */
function rawReply(socket: Duplex, reply: RawReply): void {
  const body = JSON.stringify({ error: { code: reply.code, message: reply.message } });
  socket.end(
    `HTTP/1.1 ${reply.status} ${STATUS_CODES[reply.status] ?? ''}\r\n` +
      'Content-Type: application/json; charset=utf-8\r\n' +
      `Content-Length: ${Buffer.byteLength(body)}\r\n` +
      'Connection: close\r\n\r\n' +
      body,
    () => socket.destroy(),
  );
}

function toApiError(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  if (err instanceof PolicyError) return invalidPolicy(err);
  if (err instanceof StoreUnavailableError) return storeUnavailable(err);
  // Koa's own errors (for example a client that sent a malformed request).
  const status = (err as { status?: unknown })?.status;
  if (typeof status === 'number' && status >= 400 && status < 500) {
    return new ApiError(status, 'invalid_request', (err as Error).message);
  }
  return new ApiError(500, 'internal', 'internal error; the API logged it', undefined, { cause: err });
}
