/**
 * Dashboard sessions (api/session.ts, api/routes/ui.ts): sign-in with a key,
 * the cookie, the same scope as the bearer key, CSRF, same-origin checks,
 * sign-out, revocation, expiry, --ui off, and no key in any log line.
 */
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import test from 'ava';
import { pino } from 'pino';
import { createApp } from '../../api/routes/app.js';
import { ADMIN_KEY, type Harness, type Reply, register, startHarness } from './harness.js';

let h: Harness;
/** Every line the API logged (level trace). */
const logLines: string[] = [];

test.before(async () => {
  const logger = pino({ level: 'trace' }, { write: (line: string) => void logLines.push(line) });
  h = await startHarness({}, { logger });
});
test.after.always(async () => {
  await h?.close();
});

interface Session {
  /** "name=value", as a Cookie header sends it back. */
  cookie: string;
  csrf: string;
  reply: Reply;
}

async function tenantKey(tenant: string): Promise<{ id: string; key: string }> {
  const r = await h.call('POST', '/api/v1/keys', { body: { tenant, cgroup_prefix: 'egressd' } });
  if (r.status !== 201) throw new Error(`key: ${r.status} ${r.text}`);
  return r.body.data;
}

async function signIn(key: string, headers: Record<string, string> = {}, on: Harness = h): Promise<Session> {
  const reply = await on.call('POST', '/ui/session', { key: '', body: { key }, headers });
  if (reply.status !== 200) throw new Error(`sign-in: ${reply.status} ${reply.text}`);
  const cookie = (reply.headers.getSetCookie()[0] ?? '').split(';')[0] ?? '';
  return { cookie, csrf: reply.body.data.csrf_token, reply };
}

/** A request with the session's cookie (and its CSRF token unless `csrf` says otherwise), no bearer key. */
function withSession(
  s: Session,
  method: string,
  path: string,
  options: { body?: unknown; csrf?: string | null; headers?: Record<string, string>; on?: Harness } = {},
): Promise<Reply> {
  const csrf = options.csrf === undefined ? s.csrf : options.csrf;
  return (options.on ?? h).call(method, path, {
    key: '',
    ...(options.body === undefined ? {} : { body: options.body }),
    headers: { cookie: s.cookie, ...(csrf === null ? {} : { 'x-csrf-token': csrf }), ...options.headers },
  });
}

const redisKeyOf = (s: Session) =>
  `egressd:ui-session:${createHash('sha256')
    .update(s.cookie.slice(s.cookie.indexOf('=') + 1))
    .digest('hex')}`;

test('admin sign-in: the cookie and its attributes, the answer, what Redis holds', async (t) => {
  const s = await signIn(ADMIN_KEY);
  const setCookie = s.reply.headers.getSetCookie();
  t.is(setCookie.length, 1);
  const [pair = '', ...attributes] = (setCookie[0] ?? '').split(';').map((a) => a.trim());
  t.regex(pair, /^egressd_session=[A-Za-z0-9_-]{43}$/);
  t.deepEqual(attributes.sort(), ['HttpOnly', 'Max-Age=28800', 'Path=/', 'SameSite=Strict']);
  t.is(s.reply.headers.get('cache-control'), 'no-store');
  const data = s.reply.body.data;
  t.is(data.kind, 'admin');
  t.is(data.tenant, null);
  t.is(data.key_id, null);
  t.regex(data.csrf_token, /^[A-Za-z0-9_-]{43}$/);
  t.is(data.idle_timeout_s, 900);
  const left = Date.parse(data.expires_at) - Date.now();
  t.true(left > 28_790_000 && left <= 28_800_000);
  // Redis: under the id's hash, with the idle TTL, and neither the key nor the id.
  const stored = await h.store.redis.hgetall(redisKeyOf(s));
  t.is(stored['kind'], 'admin');
  const ttl = await h.store.redis.pttl(redisKeyOf(s));
  t.true(ttl > 890_000 && ttl <= 900_000, String(ttl));
  const text = JSON.stringify(stored);
  t.false(text.includes(ADMIN_KEY));
  t.false(text.includes(s.cookie.split('=')[1] ?? '-'));
  // The cookie works under /api/v1, admin-only endpoints included.
  t.is((await withSession(s, 'GET', '/api/v1/computers')).status, 200);
  t.is((await withSession(s, 'GET', '/api/v1/keys')).status, 200);
  const again = await withSession(s, 'GET', '/ui/session');
  t.is(again.status, 200);
  t.is(again.body.data.csrf_token, s.csrf);
});

test('over TLS (an https Origin: a TLS proxy in front) the cookie is Secure and __Host-, and only that name counts', async (t) => {
  const origin = `https://${new URL(h.baseUrl).host}`;
  const s = await signIn(ADMIN_KEY, { origin });
  const set = s.reply.headers.getSetCookie()[0] ?? '';
  t.regex(set, /^__Host-egressd_session=[A-Za-z0-9_-]{43}; /);
  t.regex(set, /; Secure(;|$)/);
  t.regex(set, /; Path=\/(;|$)/);
  t.notRegex(set, /Domain=/i);
  t.is((await withSession(s, 'GET', '/api/v1/computers')).status, 200);
  const renamed = { ...s, cookie: s.cookie.replace('__Host-egressd_session', 'egressd_session') };
  t.is((await withSession(renamed, 'GET', '/api/v1/computers')).status, 401);
});

test('a wrong key, or a body that is not one, is refused and sets no cookie', async (t) => {
  const forged = `egk_${'0'.repeat(16)}_${'A'.repeat(43)}`;
  const cases: Array<[{ body?: unknown; raw?: string; contentType?: string }, number]> = [
    [{ body: { key: 'wrong' } }, 401],
    [{ body: { key: forged } }, 401],
    [{ body: { key: `${ADMIN_KEY} ` } }, 401],
    [{ body: {} }, 400],
    [{ body: { key: 1 } }, 400],
    [{ body: { key: ADMIN_KEY, extra: 1 } }, 400],
    [{ body: [ADMIN_KEY] }, 400],
    [{ raw: `{"key": "${ADMIN_KEY}"`, contentType: 'application/json' }, 400],
    [{ raw: `key=${ADMIN_KEY}`, contentType: 'application/x-www-form-urlencoded' }, 415],
    [{ raw: 'x'.repeat(5000), contentType: 'application/json' }, 413],
  ];
  for (const [options, status] of cases) {
    const r = await h.call('POST', '/ui/session', { key: '', ...options });
    t.is(r.status, status, JSON.stringify(options).slice(0, 80));
    t.deepEqual(r.headers.getSetCookie(), []);
    t.false(r.text.includes(ADMIN_KEY), 'the answer does not quote the key');
  }
  // A bearer header does not sign in.
  t.is((await h.call('POST', '/ui/session', { body: {} })).status, 400);
});

test('a tenant session sees exactly what its bearer key sees', async (t) => {
  const a = await tenantKey('ui-acme');
  const b = await tenantKey('ui-globex');
  await register(h, 'ui-acme~1', {}, a.key);
  await register(h, 'ui-globex~1', {}, b.key);
  const s = await signIn(a.key);
  t.like(s.reply.body.data, { kind: 'tenant', tenant: 'ui-acme', key_id: a.id });
  const list = await withSession(s, 'GET', '/api/v1/computers');
  t.deepEqual(
    list.body.data.map((c: { id: string }) => c.id),
    ['ui-acme~1'],
  );
  for (const [method, path, body] of [
    ['GET', '/api/v1/computers', undefined],
    ['GET', '/api/v1/computers/ui-acme~1', undefined],
    ['GET', '/api/v1/computers/ui-globex~1', undefined],
    ['GET', '/api/v1/computers/ui-globex~1/network-policy', undefined],
    ['PUT', '/api/v1/computers/ui-globex~1/network-policy?wait=0', { mode: 'isolated' }],
    ['DELETE', '/api/v1/computers/ui-globex~1', undefined],
    ['GET', '/api/v1/keys', undefined],
    ['GET', '/api/v1/service', undefined],
  ] as const) {
    const bearer = await h.call(method, path, { key: a.key, ...(body ? { body } : {}) });
    const session = await withSession(s, method, path, body ? { body } : {});
    t.is(session.status, bearer.status, `${method} ${path}`);
    t.deepEqual(session.body, bearer.body, `${method} ${path}`);
  }
  t.is((await h.call('GET', '/api/v1/computers/ui-globex~1/network-policy')).body.data.mode, 'unrestricted');
});

test('CSRF: a change made with the cookie needs the session token; bearer requests do not', async (t) => {
  await register(h, 'ui-csrf');
  const s = await signIn(ADMIN_KEY);
  const path = '/api/v1/computers/ui-csrf/network-policy?wait=0';
  const body = { mode: 'isolated' };
  const missing = await withSession(s, 'PUT', path, { body, csrf: null });
  t.is(missing.status, 403);
  t.is(missing.body.error.code, 'csrf_token_required');
  t.regex(missing.body.error.message, /X-CSRF-Token/);
  const wrong = await withSession(s, 'PUT', path, { body, csrf: 'A'.repeat(43) });
  t.is(wrong.status, 403);
  t.is(wrong.body.error.code, 'csrf_token_invalid');
  const other = await signIn(ADMIN_KEY);
  t.is(
    (await withSession(s, 'PUT', path, { body, csrf: other.csrf })).status,
    403,
    "another session's token",
  );
  for (const [method, p] of [
    ['POST', '/api/v1/keys'],
    ['DELETE', '/api/v1/computers/ui-csrf'],
    ['DELETE', '/api/v1/computers/ui-csrf/network-policy'],
  ] as const) {
    const r = await withSession(s, method, p, {
      csrf: null,
      ...(method === 'POST' ? { body: { tenant: 'x' } } : {}),
    });
    t.is(r.status, 403, `${method} ${p}`);
  }
  t.is((await h.call('GET', '/api/v1/computers/ui-csrf/network-policy')).body.data.mode, 'unrestricted');
  const ok = await withSession(s, 'PUT', path, { body });
  t.true(ok.status === 200 || ok.status === 202, String(ok.status));
  t.is(ok.body.data.mode, 'isolated');
  const bearer = await h.call('PUT', path, { body: { mode: 'unrestricted' } });
  t.true(bearer.status === 200 || bearer.status === 202);
});

test('cross-site requests are refused, with the cookie and at sign-in', async (t) => {
  await register(h, 'ui-xsite');
  const s = await signIn(ADMIN_KEY);
  const path = '/api/v1/computers/ui-xsite/network-policy?wait=0';
  const here = new URL(h.baseUrl).host;
  for (const headers of [
    { origin: 'http://evil.example' },
    { origin: `http://${here}.evil.example` },
    { origin: 'null' },
    { 'sec-fetch-site': 'cross-site' },
    { 'sec-fetch-site': 'same-site' },
    { 'sec-fetch-site': 'cross-site', origin: `http://${here}` },
  ] as Record<string, string>[]) {
    const put = await withSession(s, 'PUT', path, { body: { mode: 'isolated' }, headers });
    t.is(put.status, 403, JSON.stringify(headers));
    t.is(put.body.error.code, 'cross_site_request');
    t.is((await withSession(s, 'GET', '/api/v1/computers', { headers })).status, 403);
    const signInReply = await h.call('POST', '/ui/session', { key: '', body: { key: ADMIN_KEY }, headers });
    t.is(signInReply.status, 403);
    t.deepEqual(signInReply.headers.getSetCookie(), []);
  }
  t.is((await h.call('GET', '/api/v1/computers/ui-xsite/network-policy')).body.data.mode, 'unrestricted');
  for (const headers of [{ 'sec-fetch-site': 'same-origin' }, { origin: `http://${here}` }] as Record<
    string,
    string
  >[]) {
    const r = await withSession(s, 'PUT', path, { body: { mode: 'isolated' }, headers });
    t.true(r.status === 200 || r.status === 202, JSON.stringify(headers));
  }
  // A bearer request is not a browser's: its Origin is not checked.
  const bearer = await h.call('GET', '/api/v1/computers', { headers: { origin: 'http://evil.example' } });
  t.is(bearer.status, 200);
});

test('sign-out ends the session (with its CSRF token) and clears the cookie; a new sign-in ends the old one', async (t) => {
  const s = await signIn(ADMIN_KEY);
  const refused = await withSession(s, 'DELETE', '/ui/session', { csrf: null });
  t.is(refused.status, 403);
  t.is((await withSession(s, 'GET', '/api/v1/computers')).status, 200, 'still signed in');
  const out = await withSession(s, 'DELETE', '/ui/session');
  t.is(out.status, 204);
  t.regex(
    out.headers.getSetCookie()[0] ?? '',
    /^egressd_session=; Path=\/; Max-Age=0; HttpOnly; SameSite=Strict$/,
  );
  t.is(await h.store.redis.exists(redisKeyOf(s)), 0);
  const after = await withSession(s, 'GET', '/api/v1/computers');
  t.is(after.status, 401);
  t.regex(after.body.error.message, /session ended/);
  t.is((await withSession(s, 'GET', '/ui/session')).status, 401);
  t.is((await withSession(s, 'DELETE', '/ui/session')).status, 204, 'signing out again is harmless');
  t.is((await h.call('GET', '/ui/session', { key: '' })).status, 401, 'no cookie');
  // Signing in again from a browser that has a session: a new id, the old one ends.
  const first = await signIn(ADMIN_KEY);
  const second = await signIn(ADMIN_KEY, { cookie: first.cookie });
  t.not(second.cookie, first.cookie);
  t.is((await withSession(first, 'GET', '/api/v1/computers')).status, 401);
  t.is((await withSession(second, 'GET', '/api/v1/computers')).status, 200);
});

test("revoking a tenant key ends its sessions; another replica shares sessions; a new admin key ends the old one's", async (t) => {
  const a = await tenantKey('ui-revoked');
  const s = await signIn(a.key);
  t.is((await withSession(s, 'GET', '/api/v1/computers')).status, 200);
  t.is((await h.call('DELETE', `/api/v1/keys/${a.id}`)).status, 204);
  const after = await withSession(s, 'GET', '/api/v1/computers');
  t.is(after.status, 401);
  t.regex(after.body.error.message, /revoked/);
  t.is(await h.store.redis.exists(redisKeyOf(s)), 0, 'the session is deleted too');

  const admin = await signIn(ADMIN_KEY);
  const replica = async (adminKey: string) => {
    const config = Object.defineProperty({ ...h.config }, 'adminKey', { value: adminKey, enumerable: false });
    const server = createApp({ store: h.store, config }).createServer();
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = (server.address() as AddressInfo).port;
    const r = await fetch(`http://127.0.0.1:${port}/api/v1/computers`, { headers: { cookie: admin.cookie } });
    server.close();
    return r.status;
  };
  t.is(await replica(ADMIN_KEY), 200, 'a replica with the same admin key');
  t.is(await replica('a-new-admin-key-0123456789'), 401, 'a replica with a new admin key');
  t.is(await replica(''), 401, 'a replica with admin access off');
});

test('the key appears in no log line; the sign-in is logged with who', async (t) => {
  const k = await tenantKey('ui-logged');
  await signIn(k.key);
  // egk_<id>_<secret>: the secret is base64url, which may hold '_' itself.
  const secret = k.key.split('_').slice(2).join('_');
  t.is(secret.length, 43);
  const attempts = [
    { body: { key: `${k.key}x` } },
    { body: { key: 'guess-of-the-admin-key-XYZZY' } },
    { raw: `{"key": "${k.key}`, contentType: 'application/json' },
    { raw: `{"key": "${k.key}"}`, contentType: 'text/plain' },
    { raw: `{"key": "${k.key}", "k": "${k.key}"}`, contentType: 'application/json' },
  ];
  for (const a of attempts) t.not((await h.call('POST', '/ui/session', { key: '', ...a })).status, 200);
  const all = logLines.join('');
  t.false(all.includes(secret), 'no secret of a key');
  t.false(all.includes('XYZZY'), 'no wrong key either');
  t.false(all.includes(ADMIN_KEY));
  const line = logLines
    .map((l) => JSON.parse(l))
    .find((l) => l.msg === 'dashboard sign-in' && l.keyId === k.id);
  t.like(line, { kind: 'tenant', tenant: 'ui-logged' });
  t.true(
    logLines.some((l) => l.includes('"path":"/ui/session"') && l.includes('"status":401')),
    'the refusals were logged (debug), without the key',
  );
});

test('sessions end after the idle limit, and after the absolute one however busy', async (t) => {
  const idle = await startHarness({ uiSessionIdle: 1, uiSessionMax: 60 });
  const busy = await startHarness({ uiSessionIdle: 60, uiSessionMax: 2 });
  try {
    const s = await signIn(ADMIN_KEY, {}, idle);
    t.is((await withSession(s, 'GET', '/api/v1/computers', { on: idle })).status, 200);
    await new Promise((r) => setTimeout(r, 1300));
    t.is((await withSession(s, 'GET', '/api/v1/computers', { on: idle })).status, 401);

    const b = await signIn(ADMIN_KEY, {}, busy);
    t.regex(b.reply.headers.getSetCookie()[0] ?? '', /Max-Age=2;/);
    for (let i = 0; i < 3; i++) {
      t.is((await withSession(b, 'GET', '/api/v1/computers', { on: busy })).status, 200);
      await new Promise((r) => setTimeout(r, 500));
    }
    await new Promise((r) => setTimeout(r, 700));
    const ended = await withSession(b, 'GET', '/api/v1/computers', { on: busy });
    t.is(ended.status, 401);
    t.regex(ended.body.error.message, /signed in more than 2 s ago/);
  } finally {
    await idle.close();
    await busy.close();
  }
});

test('--ui off: no sign-in, no session, no cookie read; not in the OpenAPI document', async (t) => {
  const off = await startHarness({ ui: 'off' });
  try {
    const signInReply = await off.call('POST', '/ui/session', { key: '', body: { key: ADMIN_KEY } });
    t.is(signInReply.status, 404);
    t.deepEqual(signInReply.headers.getSetCookie(), []);
    t.is((await off.call('GET', '/ui/session', { key: '' })).status, 404);
    t.is((await off.call('DELETE', '/ui/session', { key: '' })).status, 404);
    const cookie = { cookie: `egressd_session=${'A'.repeat(43)}` };
    const api = await off.call('GET', '/api/v1/computers', { key: '', headers: cookie });
    t.is(api.status, 401);
    t.regex(api.body.error.message, /^missing API key/);
    const doc = (await off.call('GET', '/api/v1/openapi.json', { key: '' })).body;
    t.false('/ui/session' in doc.paths);
    t.false('session' in doc.components.securitySchemes);
  } finally {
    await off.close();
  }
});
