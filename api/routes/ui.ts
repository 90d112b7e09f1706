/**
 * The dashboard's sign-in (only with --ui on): POST /ui/session exchanges a
 * key for a session cookie, GET answers the session (and its CSRF token,
 * for a page that was reloaded), DELETE signs out. api/session.ts has the
 * rules. The key is read from the body only, and never logged: not even
 * JSON.parse's message, which quotes the text it failed on.
 */
import type { Context } from 'koa';
import type { Logger } from 'pino';
import type { Principal } from '../auth.js';
import { readJson } from '../body.js';
import { ApiError } from '../errors.js';
import { checkSameOrigin, type UiSessions } from '../session.js';
import type { ApiRouter } from './deps.js';

export const SESSION_PATH = '/ui/session';
/** A sign-in body is a key and nothing else. */
const SIGN_IN_LIMIT_BYTES = 4096;
const SEND = 'send {"key": "<API key>"} as application/json';

export function uiRoutes(router: ApiRouter, sessions: UiSessions, logger: Logger): void {
  router.post(SESSION_PATH, async (ctx) => {
    checkSameOrigin(ctx);
    const key = await readKey(ctx);
    const { view, principal } = await sessions.signIn(ctx, key);
    logger.info(who(principal), 'dashboard sign-in');
    ctx.body = { data: view };
  });

  router.get(SESSION_PATH, async (ctx) => {
    const { record } = await sessions.current(ctx);
    ctx.body = { data: sessions.view(record) };
  });

  router.delete(SESSION_PATH, async (ctx) => {
    const ended = await sessions.signOut(ctx);
    if (ended) logger.info(who(ended), 'dashboard sign-out');
    ctx.status = 204;
  });
}

/** Who, for a log line: the kind, and a tenant key's tenant and id (never the key). */
function who(p: Principal): Record<string, string> {
  return p.kind === 'admin' ? { kind: 'admin' } : { kind: 'tenant', tenant: p.tenant, keyId: p.keyId };
}

async function readKey(ctx: Context): Promise<string> {
  let body: unknown;
  try {
    body = await readJson(ctx, SIGN_IN_LIMIT_BYTES);
  } catch (err) {
    if (err instanceof ApiError && err.code === 'invalid_json') {
      throw new ApiError(400, 'invalid_json', `body: not valid JSON; ${SEND}`);
    }
    if (err instanceof ApiError && err.code === 'payload_too_large') {
      throw new ApiError(413, 'payload_too_large', `body: larger than ${SIGN_IN_LIMIT_BYTES} bytes; ${SEND}`);
    }
    throw err;
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new ApiError(400, 'invalid_request', `body: must be a JSON object; ${SEND}`);
  }
  const key = (body as { key?: unknown }).key;
  if (typeof key !== 'string' || key === '') {
    throw new ApiError(400, 'invalid_request', `key: required, a non-empty string; ${SEND}`);
  }
  if (Object.keys(body).length !== 1) {
    throw new ApiError(400, 'invalid_request', `body: takes "key" only; ${SEND}`);
  }
  return key;
}
