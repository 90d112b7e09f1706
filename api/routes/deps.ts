/** What every route module gets, and the per-request state it can rely on. */
import type Router from '@koa/router';
import type { Middleware } from 'koa';
import type { Store } from '../../store/store.js';
import type { Authenticator, Principal } from '../auth.js';
import type { ApiConfig } from '../config.js';
import { ApiError } from '../errors.js';
import type { ApiMetrics } from '../metrics.js';
import { sessionCookie, type UiSessions } from '../session.js';
import type { EventStreams } from '../streams.js';

export interface ApiState {
  principal: Principal;
  /** The dashboard session (sha256 of its id) that authenticated the request; none for a bearer key. */
  session?: string | undefined;
  /** The metrics' route label of a request no route matched (the dashboard's files). */
  route?: string | undefined;
}

export type ApiRouter = Router<ApiState>;

export interface RouteDeps {
  store: Store;
  config: ApiConfig;
  authenticator: Authenticator;
  metrics: ApiMetrics;
  streams: EventStreams;
  /** Dashboard sessions; undefined with --ui off (then no cookie is read). */
  sessions: UiSessions | undefined;
}

/**
 * Authenticates the bearer key into `ctx.state.principal` (401 otherwise).
 * Without an Authorization header, a dashboard session cookie does instead
 * (api/session.ts: same origin, and the CSRF token when it changes something).
 */
export function requireKey(deps: RouteDeps): Middleware<ApiState> {
  return async (ctx, next) => {
    const header = ctx.get('Authorization');
    if (header === '' && deps.sessions && sessionCookie(ctx)) {
      const session = await deps.sessions.authenticate(ctx);
      ctx.state.principal = session.principal;
      ctx.state.session = session.idHash;
    } else {
      ctx.state.principal = await deps.authenticator.authenticate(header || undefined);
    }
    await next();
  };
}

/** Lets only the admin key through (403 for a tenant key, with `why` it cannot). */
export function requireAdmin(why: string): Middleware<ApiState> {
  return async (ctx, next) => {
    if (ctx.state.principal.kind !== 'admin') {
      throw new ApiError(403, 'forbidden', `this endpoint needs the admin key: ${why}`);
    }
    await next();
  };
}
