/**
 * Dashboard sessions: a bearer key exchanged once (POST /ui/session) for a
 * cookie, so that the page never keeps the key. The rules, in the order
 * they are checked:
 *
 * - Same origin only. A request that carries `Sec-Fetch-Site` must say
 *   `same-origin` (or `none`: typed by the user); one without it but with
 *   `Origin` must name this Host. Else 403 `cross_site_request`. Applies to
 *   sign-in, sign-out and every request the cookie authenticates; bearer
 *   requests are not checked (a browser cannot send their header cross-site
 *   without a CORS preflight, which this API never grants).
 * - The cookie: a random 32-byte id (base64url), HttpOnly, SameSite=Strict,
 *   Path=/, Max-Age the absolute limit. Over TLS (the socket, or the page's
 *   `Origin` is https: a TLS proxy in front) it is Secure and named
 *   `__Host-egressd_session`, which browsers refuse without Secure, with a
 *   Domain or another Path; over plain HTTP (egressd on localhost, its
 *   default --listen) it is `egressd_session`, without Secure, which a
 *   browser would not send back over plain HTTP. A session is honoured only
 *   under the name it was made with.
 * - Redis holds the session under the sha256 of its id, never the id and
 *   never the key: who signed in (admin, or the tenant key's id and tenant),
 *   the CSRF token, the limits. Its TTL is the idle limit, renewed by each
 *   request; `expires_at` is the absolute one. Every API replica reads the
 *   same sessions.
 * - The key still counts: each request looks the tenant key up (a revoked
 *   key ends its sessions at once, in every replica) or compares the admin
 *   key's fingerprint (a new admin key ends the old one's sessions). The
 *   principal is then exactly what the bearer key would give: same scope.
 * - CSRF: a request other than GET, HEAD or OPTIONS that the cookie
 *   authenticates must carry `X-CSRF-Token`, the session's token (in the
 *   sign-in answer and GET /ui/session): 403 `csrf_token_required` without
 *   it, `csrf_token_invalid` when it differs.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Context } from 'koa';
import type { SessionRecord, Store } from '../store/store.js';
import type { Authenticator, Principal } from './auth.js';
import { ApiError } from './errors.js';

export const CSRF_HEADER = 'X-CSRF-Token';
/** The cookie's name over TLS. */
export const SECURE_COOKIE = '__Host-egressd_session';
/** The cookie's name over plain HTTP. */
export const PLAIN_COOKIE = 'egressd_session';

const ID_RE = /^[A-Za-z0-9_-]{43}$/;
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

export interface SessionLimits {
  /** Milliseconds without a request after which a session ends. */
  idleMs: number;
  /** Milliseconds after its sign-in at which a session ends. */
  maxMs: number;
}

/** A session as answered by POST and GET /ui/session. */
export interface SessionView {
  kind: 'admin' | 'tenant';
  tenant: string | null;
  key_id: string | null;
  csrf_token: string;
  idle_timeout_s: number;
  expires_at: string;
}

/** A session found for a request. */
export interface CurrentSession {
  principal: Principal;
  record: SessionRecord;
  idHash: string;
  secure: boolean;
}

const hashId = (id: string) => createHash('sha256').update(id).digest('hex');
const unauthorized = (why: string) => new ApiError(401, 'unauthorized', why);
const crossSite = (why: string) =>
  new ApiError(
    403,
    'cross_site_request',
    `cross-site request refused (${why}): the dashboard's sign-in and session take requests from its own pages only`,
  );

/** 403 unless the request comes from a page of this origin (or from no browser page at all). */
export function checkSameOrigin(ctx: Context): void {
  const site = ctx.get('Sec-Fetch-Site');
  if (site !== '') {
    if (site !== 'same-origin' && site !== 'none') throw crossSite(`Sec-Fetch-Site: ${site.slice(0, 40)}`);
    return;
  }
  const origin = ctx.get('Origin');
  if (origin === '') return;
  let host: string | undefined;
  try {
    host = new URL(origin).host;
  } catch {
    host = undefined;
  }
  if (host !== ctx.host) throw crossSite(`Origin ${origin.slice(0, 200)} is not this host, ${ctx.host}`);
}

/** The session cookie of a request, preferring the TLS one; undefined when none is well formed. */
export function sessionCookie(ctx: Context): { id: string; secure: boolean } | undefined {
  const header = ctx.get('Cookie');
  if (header === '') return undefined;
  let plain: string | undefined;
  for (const part of header.split(';')) {
    const at = part.indexOf('=');
    if (at < 0) continue;
    const name = part.slice(0, at).trim();
    const value = part.slice(at + 1).trim();
    if (!ID_RE.test(value)) continue;
    if (name === SECURE_COOKIE) return { id: value, secure: true };
    if (name === PLAIN_COOKIE) plain ??= value;
  }
  return plain === undefined ? undefined : { id: plain, secure: false };
}

function cookieHeader(secure: boolean, value: string, maxAgeS: number): string {
  return (
    `${secure ? SECURE_COOKIE : PLAIN_COOKIE}=${value}; Path=/; Max-Age=${maxAgeS}; HttpOnly; SameSite=Strict` +
    (secure ? '; Secure' : '')
  );
}

export class UiSessions {
  constructor(
    private readonly store: Store,
    private readonly authenticator: Authenticator,
    private readonly limits: SessionLimits,
  ) {}

  /**
   * Checks `key` exactly as the bearer header's is checked (401 otherwise,
   * and no cookie), ends the session the browser had, makes a new one and
   * sets its cookie on `ctx`.
   */
  async signIn(ctx: Context, key: string): Promise<{ view: SessionView; principal: Principal }> {
    checkSameOrigin(ctx);
    const principal = await this.authenticator.authenticateKey(key);
    const old = sessionCookie(ctx);
    if (old) await this.store.deleteSession(hashId(old.id));
    const id = randomBytes(32).toString('base64url');
    const now = Date.now();
    const secure = ctx.secure || /^https:/i.test(ctx.get('Origin'));
    const record: SessionRecord = {
      kind: principal.kind,
      keyId: principal.kind === 'tenant' ? principal.keyId : '',
      tenant: principal.kind === 'tenant' ? principal.tenant : '',
      admin: principal.kind === 'admin' ? await this.authenticator.adminFingerprint() : '',
      csrf: randomBytes(32).toString('base64url'),
      secure,
      createdAt: now,
      expiresAt: now + this.limits.maxMs,
    };
    await this.store.putSession(hashId(id), record, Math.min(this.limits.idleMs, this.limits.maxMs));
    ctx.append('Set-Cookie', cookieHeader(secure, id, Math.ceil(this.limits.maxMs / 1000)));
    return { view: this.view(record), principal };
  }

  /**
   * The request's session: 403 from another site, 401 when it has none, or
   * it ended (signed out, idle, too old, its key revoked). Renews its idle TTL.
   */
  async current(ctx: Context): Promise<CurrentSession> {
    checkSameOrigin(ctx);
    const cookie = sessionCookie(ctx);
    if (!cookie) {
      throw unauthorized('not signed in: POST /ui/session with {"key": "<API key>"}, or send a bearer key');
    }
    const idHash = hashId(cookie.id);
    const record = await this.store.touchSession(idHash, this.limits.idleMs);
    const ended = unauthorized(
      `the dashboard session ended (signed out, no request for ${this.limits.idleMs / 1000} s, or ` +
        `signed in more than ${this.limits.maxMs / 1000} s ago): sign in again`,
    );
    if (!record || record.secure !== cookie.secure) throw ended;
    if (Date.now() >= record.expiresAt) {
      await this.store.deleteSession(idHash);
      throw ended;
    }
    const principal = await this.principalOf(record);
    if (!principal) {
      await this.store.deleteSession(idHash);
      throw unauthorized(
        'the key this dashboard session signed in with was revoked (or the admin key changed): sign in again',
      );
    }
    return { principal, record, idHash, secure: cookie.secure };
  }

  /** The session of a cookie-authenticated request; a state-changing one must carry the CSRF token. */
  async authenticate(ctx: Context): Promise<CurrentSession> {
    const session = await this.current(ctx);
    if (!SAFE_METHODS.has(ctx.method)) checkCsrf(ctx, session.record);
    return session;
  }

  /**
   * Ends the request's session (with its CSRF token) and clears its cookie;
   * a request without a live session only has its cookie cleared. Answers
   * what it ended, for the log.
   */
  async signOut(ctx: Context): Promise<Principal | undefined> {
    checkSameOrigin(ctx);
    const cookie = sessionCookie(ctx);
    if (!cookie) return undefined;
    let session: CurrentSession | undefined;
    try {
      session = await this.current(ctx);
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 401)) throw err;
    }
    if (session) {
      checkCsrf(ctx, session.record);
      await this.store.deleteSession(session.idHash);
    }
    ctx.append('Set-Cookie', cookieHeader(cookie.secure, '', 0));
    return session?.principal;
  }

  view(record: SessionRecord): SessionView {
    return {
      kind: record.kind,
      tenant: record.kind === 'tenant' ? record.tenant : null,
      key_id: record.kind === 'tenant' ? record.keyId : null,
      csrf_token: record.csrf,
      idle_timeout_s: Math.round(this.limits.idleMs / 1000),
      expires_at: new Date(record.expiresAt).toISOString(),
    };
  }

  /** Who the session acts as now; undefined when its key is gone (or the admin key changed). */
  private async principalOf(record: SessionRecord): Promise<Principal | undefined> {
    if (record.kind === 'admin') {
      const now = await this.authenticator.adminFingerprint();
      return now !== '' && now === record.admin ? { kind: 'admin' } : undefined;
    }
    const key = await this.store.getApiKey(record.keyId);
    if (!key || key.tenant !== record.tenant) return undefined;
    return { kind: 'tenant', tenant: key.tenant, keyId: key.id, cgroupPrefix: key.cgroupPrefix };
  }
}

function checkCsrf(ctx: Context, record: SessionRecord): void {
  const given = ctx.get(CSRF_HEADER);
  if (given === '') {
    throw new ApiError(
      403,
      'csrf_token_required',
      `a request that changes something with the session cookie must carry the header ${CSRF_HEADER}: ` +
        'the csrf_token of the sign-in answer (or of GET /ui/session)',
    );
  }
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(record.csrf).digest();
  if (!timingSafeEqual(a, b)) {
    throw new ApiError(
      403,
      'csrf_token_invalid',
      `${CSRF_HEADER} is not this session's token: send the csrf_token of GET /ui/session`,
    );
  }
}
