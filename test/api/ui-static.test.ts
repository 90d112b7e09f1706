/**
 * The dashboard's files under /ui/ (api/routes/ui-assets.ts), as
 * `npm run build` leaves them in dist/ui: the security headers on every
 * answer under /ui, caching (the bundle's hashed names kept for good, the
 * page never), gzip, only the manifest's files, and no path that leaves the
 * table of files. Requests go through node:http, which sends a path as
 * written (fetch would resolve the `..` first) and decompresses nothing.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync } from 'node:zlib';
import test from 'ava';
import { CONTENT_SECURITY_POLICY, DEFAULT_UI_DIR, loadAssets } from '../../api/routes/ui-assets.js';
import { type Harness, startHarness } from './harness.js';

const UI_SOURCES = fileURLToPath(new URL('../../../ui/', import.meta.url));

let h: Harness;
/** The bundle's names, from the built page. */
let js = '';
let css = '';
test.before(async () => {
  h = await startHarness();
  const html = readFileSync(path.join(DEFAULT_UI_DIR, 'index.html'), 'utf8');
  js = /src="\/ui\/(app-[A-Z0-9]+\.js)"/.exec(html)?.[1] ?? 'none.js';
  css = /href="\/ui\/(style-[A-Z0-9]+\.css)"/.exec(html)?.[1] ?? 'none.css';
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

function rawBytes(
  on: Harness,
  path: string,
  headers: Record<string, string>,
): Promise<{ headers: Record<string, string | string[] | undefined>; body: Buffer }> {
  const { hostname, port } = new URL(on.baseUrl);
  return new Promise((resolve, reject) => {
    const req = request({ host: hostname, port, path, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ headers: res.headers, body: Buffer.concat(chunks) }));
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
    "require-trusted-types-for 'script'",
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
    t.regex(r.body, /<div id="app">/);
    checkSecurityHeaders(t, r, path);
  }
  const script = await raw(h, 'GET', `/ui/${js}`);
  t.is(script.status, 200);
  t.is(script.headers['content-type'], 'text/javascript; charset=utf-8');
  t.is(script.headers['cache-control'], 'max-age=31536000, immutable', 'a hashed name: kept for good');
  checkSecurityHeaders(t, script, `/ui/${js}`);
  const etag = String(script.headers['etag']);
  t.regex(etag, /^"[A-Za-z0-9_-]{22}"$/);
  const again = await raw(h, 'GET', `/ui/${js}`, { 'if-none-match': etag });
  t.is(again.status, 304);
  t.is(again.body, '');
  const style = await raw(h, 'GET', `/ui/${css}`);
  t.is(style.status, 200);
  t.is(style.headers['content-type'], 'text/css; charset=utf-8');
  t.regex(style.body, /\.uplot/, "uPlot's style sheet is in the one style sheet");
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
    ['GET', '/ui/manifest.json', 404],
    ['GET', '/ui/model.js', 404],
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

test('gzip for a client that takes it, with Vary and an ETag of its own; the same bytes unzipped', async (t) => {
  for (const name of [js, css, 'index.html']) {
    const plain = await rawBytes(h, `/ui/${name}`, {});
    const zipped = await rawBytes(h, `/ui/${name}`, { 'accept-encoding': 'gzip, deflate, br' });
    t.is(plain.headers['content-encoding'], undefined, name);
    t.is(zipped.headers['content-encoding'], 'gzip', name);
    t.regex(String(zipped.headers['vary']), /Accept-Encoding/i, name);
    t.regex(String(plain.headers['vary']), /Accept-Encoding/i, name);
    t.true(gunzipSync(zipped.body).equals(plain.body), name);
    const most = name === 'index.html' ? plain.body.length : plain.body.length / 2;
    t.true(zipped.body.length < most, `${name}: ${zipped.body.length} of ${plain.body.length}`);
    if (name !== 'index.html') t.not(zipped.headers['etag'], plain.headers['etag'], name);
  }
  const refused = await rawBytes(h, `/ui/${js}`, { 'accept-encoding': 'gzip;q=0' });
  t.is(refused.headers['content-encoding'], undefined);
});

test('only the files of the manifest are served', async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'egressd-ui-'));
  writeFileSync(path.join(dir, 'index.html'), '<!doctype html><title>x</title>');
  writeFileSync(path.join(dir, 'listed.js'), 'export {};');
  writeFileSync(path.join(dir, 'stray.js'), 'export {};');
  writeFileSync(
    path.join(dir, 'manifest.json'),
    JSON.stringify({ files: ['index.html', 'listed.js'], immutable: [] }),
  );
  const listed = await startHarness({}, { uiDir: dir });
  try {
    t.is((await raw(listed, 'GET', '/ui/listed.js')).status, 200);
    t.is((await raw(listed, 'GET', '/ui/listed.js')).headers['cache-control'], 'no-cache');
    t.is((await raw(listed, 'GET', '/ui/stray.js')).status, 404);
  } finally {
    await listed.close();
  }
  writeFileSync(
    path.join(dir, 'manifest.json'),
    JSON.stringify({ files: ['../package.json'], immutable: [] }),
  );
  t.throws(() => loadAssets(dir), { message: /not a file the dashboard may serve/ });
  rmSync(dir, { recursive: true, force: true });
});

test('the page holds no inline script or style, and keeps nothing in storage', async (t) => {
  const html = (await raw(h, 'GET', '/ui/')).body;
  const scripts = [...html.matchAll(/<script\b([^>]*)>([\s\S]*?)<\/script>/gi)];
  t.is(scripts.length, 1);
  for (const [, attributes = '', content = ''] of scripts) {
    t.regex(attributes, /\bsrc="\/ui\/[^"]+"/);
    t.is(content.trim(), '');
  }
  t.notRegex(html, /<style\b/i);
  t.notRegex(html, /\sstyle=/i);
  t.notRegex(html, /\son[a-z]+=/i, 'no event handler attributes');
  t.notRegex(html, /https?:\/\//, 'nothing from another origin');
  const bundle = (await raw(h, 'GET', `/ui/${js}`)).body;
  t.notRegex(bundle, /localStorage|sessionStorage|indexedDB|document\.cookie/);
  t.notRegex(
    bundle,
    /https?:\/\/(?!www\.w3\.org\/)/,
    'no URL of another origin (but SVG and XML namespaces)',
  );
  // Preact itself can set innerHTML (dangerouslySetInnerHTML), so the sources are checked instead,
  // and the CSP's Trusted Types stop any string reaching an HTML sink in the browser.
  for (const name of readdirSync(UI_SOURCES).filter((n) => /\.tsx?$/.test(n))) {
    const source = readFileSync(path.join(UI_SOURCES, name), 'utf8');
    t.notRegex(
      source,
      /innerHTML|outerHTML|insertAdjacentHTML|dangerouslySetInnerHTML|eval\(|new Function/,
      name,
    );
    t.notRegex(source, /localStorage|sessionStorage|indexedDB|document\.cookie/, name);
    t.notRegex(source, /\bstyle=\{/, `${name}: no style attribute (the CSP refuses it)`);
  }
});

test('--ui off: /ui/ is 404, without the dashboard headers', async (t) => {
  const off = await startHarness({ ui: 'off' });
  try {
    for (const path of ['/ui/', '/ui/index.html', `/ui/${js}`, '/ui']) {
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
