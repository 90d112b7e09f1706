/**
 * The dashboard's files under /ui/ (api/routes/ui-assets.ts), as
 * `npm run build` leaves them in dist/ui: the security headers on every
 * answer under /ui, caching, and no path that leaves the table of files.
 * Requests go through node:http, which sends a path as written (fetch would
 * resolve the `..` first).
 */
import { request } from 'node:http';
import test from 'ava';
import { CONTENT_SECURITY_POLICY } from '../../api/routes/ui-assets.js';
import { type Harness, startHarness } from './harness.js';

let h: Harness;
test.before(async () => {
  h = await startHarness();
});
test.after.always(async () => {
  await h?.close();
});

interface RawReply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

function raw(
  on: Harness,
  method: string,
  path: string,
  headers: Record<string, string> = {},
): Promise<RawReply> {
  const { hostname, port } = new URL(on.baseUrl);
  return new Promise((resolve, reject) => {
    const req = request({ host: hostname, port, method, path, headers }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        body += chunk;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

function checkSecurityHeaders(t: import('ava').ExecutionContext, r: RawReply, what: string): void {
  const csp = String(r.headers['content-security-policy']);
  t.is(csp, CONTENT_SECURITY_POLICY, what);
  for (const directive of [
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "frame-ancestors 'none'",
    "object-src 'none'",
    "base-uri 'none'",
  ]) {
    t.true(csp.split('; ').includes(directive), `${what}: ${directive}`);
  }
  t.false(csp.includes('unsafe-'), `${what}: nothing unsafe`);
  t.is(r.headers['x-content-type-options'], 'nosniff', what);
  t.is(r.headers['referrer-policy'], 'no-referrer', what);
  t.is(r.headers['x-frame-options'], 'DENY', what);
}

test('the page and its files, with the security headers; HTML is never stored', async (t) => {
  for (const path of ['/ui/', '/ui/index.html']) {
    const r = await raw(h, 'GET', path);
    t.is(r.status, 200, path);
    t.is(r.headers['content-type'], 'text/html; charset=utf-8');
    t.is(r.headers['cache-control'], 'no-store');
    t.regex(r.body, /<form id="sign-in"/);
    checkSecurityHeaders(t, r, path);
  }
  const js = await raw(h, 'GET', '/ui/app.js');
  t.is(js.status, 200);
  t.is(js.headers['content-type'], 'text/javascript; charset=utf-8');
  t.is(js.headers['cache-control'], 'no-cache');
  checkSecurityHeaders(t, js, '/ui/app.js');
  const etag = String(js.headers['etag']);
  t.regex(etag, /^"[A-Za-z0-9_-]{22}"$/);
  const again = await raw(h, 'GET', '/ui/app.js', { 'if-none-match': etag });
  t.is(again.status, 304);
  t.is(again.body, '');
  const css = await raw(h, 'GET', '/ui/app.css');
  t.is(css.status, 200);
  t.is(css.headers['content-type'], 'text/css; charset=utf-8');
  const head = await raw(h, 'HEAD', '/ui/');
  t.is(head.status, 200);
  t.is(head.body, '');
  const bare = await raw(h, 'GET', '/ui');
  t.is(bare.status, 308);
  t.is(bare.headers['location'], '/ui/');
  checkSecurityHeaders(t, bare, '/ui');
});

test('errors under /ui carry the headers too, and are not stored', async (t) => {
  for (const [method, path, status] of [
    ['GET', '/ui/nothing.js', 404],
    ['GET', '/ui/app.js.map', 404],
    ['POST', '/ui/', 405],
    ['GET', '/ui/session', 401],
  ] as const) {
    const r = await raw(h, method, path);
    t.is(r.status, status, `${method} ${path}`);
    t.is(r.headers['cache-control'], 'no-store');
    t.is(JSON.parse(r.body).error.message.length > 0, true);
    checkSecurityHeaders(t, r, `${method} ${path}`);
  }
});

test('no path leaves the table of files: traversal, encoded or not, is 404', async (t) => {
  for (const path of [
    '/ui/../package.json',
    '/ui/../../package.json',
    '/ui/%2e%2e/package.json',
    '/ui/%2E%2E/package.json',
    '/ui/..%2fpackage.json',
    '/ui/..%2Fpackage.json',
    '/ui/%2e%2e%2fpackage.json',
    '/ui/..%5cpackage.json',
    '/ui/..\\package.json',
    '/ui/....//package.json',
    '/ui//etc/passwd',
    '/ui/%2fetc%2fpasswd',
    '/ui/app.js/../../package.json',
    '/ui/./app.js/../../../api/routes/app.js',
    '/ui/%00',
    '/ui/../../../../../../etc/passwd',
  ]) {
    const r = await raw(h, 'GET', path);
    t.is(r.status, 404, path);
    t.false(r.body.includes('"devDependencies"'), path);
    t.false(r.body.includes('root:'), path);
  }
});

test('the page holds no inline script or style, and keeps nothing in storage', async (t) => {
  const html = (await raw(h, 'GET', '/ui/')).body;
  const scripts = [...html.matchAll(/<script\b([^>]*)>([\s\S]*?)<\/script>/gi)];
  t.true(scripts.length > 0);
  for (const [, attributes = '', content = ''] of scripts) {
    t.regex(attributes, /\bsrc="\/ui\/[^"]+"/);
    t.is(content.trim(), '');
  }
  t.notRegex(html, /<style\b/i);
  t.notRegex(html, /\sstyle=/i);
  t.notRegex(html, /\son[a-z]+=/i, 'no event handler attributes');
  t.notRegex(html, /https?:\/\//, 'nothing from another origin');
  t.notRegex(html, /<input[^>]*\bname=/i, 'no named input: a form sent without the script carries no key');
  const js = (await raw(h, 'GET', '/ui/app.js')).body;
  t.notRegex(js, /localStorage|sessionStorage|indexedDB|document\.cookie/);
  t.notRegex(js, /innerHTML|outerHTML|insertAdjacentHTML|eval\(/);
});

test('--ui off: /ui/ is 404, without the dashboard headers', async (t) => {
  const off = await startHarness({ ui: 'off' });
  try {
    for (const path of ['/ui/', '/ui/index.html', '/ui/app.js', '/ui']) {
      const r = await raw(off, 'GET', path);
      t.is(r.status, 404, path);
      t.is(r.headers['content-security-policy'], undefined);
    }
  } finally {
    await off.close();
  }
});

test('a dashboard that was not built answers 404 saying so', async (t) => {
  const unbuilt = await startHarness({}, { uiDir: '/nonexistent/egressd-ui' });
  try {
    const r = await raw(unbuilt, 'GET', '/ui/');
    t.is(r.status, 404);
    t.regex(JSON.parse(r.body).error.message, /npm run build/);
  } finally {
    await unbuilt.close();
  }
});
