/**
 * The dashboard in a real browser (Debian's chromium through puppeteer-core:
 * test/helpers/browser.ts) against the real `egressd all` with a test world:
 * sign in with a key typed into the form; a refused connect made here shows
 * up live in the computer's view; a suggested allowlist applied from its
 * view is enforced; an invalid rule's error stands beside that rule's port;
 * a tenant key sees its tenant's computers only; signing out ends the
 * session. And the security checks: no key in any URL (or header) the page
 * requests, nor in its storage; a cross-site POST, or one without the CSRF
 * token, is refused; the CSP header is present, and nothing broke it.
 *
 * Screenshots of each view go to test-output/ui/ (docs/screenshots/ holds
 * copies for the README); the figures measured (page weight, time to first
 * render, time from a refused connect to its row on the page) are logged
 * and written to test-output/ui/figures.json.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { Redis } from 'ioredis';
import type { Browser, Page } from 'puppeteer-core';
import { CONTENT_SECURITY_POLICY } from '../../api/routes/ui-assets.js';
import { keys as redisKeys } from '../../store/keys.js';
import {
  launchChromium,
  openPage,
  type Recorded,
  SCREENSHOTS,
  screenshot,
  waitForText,
} from '../helpers/browser.js';
import { ADMIN_KEY, type Egressd, SCALE, startEgressd, waitFor } from '../helpers/egressd.js';
import { createWorld, type World } from '../helpers/world.js';

let browser: Browser;
let world: World;
let egressd: Egressd;
/** The admin's page, signed in by the first test. */
let admin: Page;
/** Every page's requests and problems. */
const recorded: Recorded[] = [];
/** Every key typed into a page. */
const keys = [ADMIN_KEY];
const cgroups = new Map<string, string>();
const figures: Record<string, number> = {};
/** The admin session's cookie (name=value), kept to try it after sign-out. */
let adminCookie = '';

const seconds = (n: number) => n * 1000 * SCALE;

async function register(id: string, cgroupName = id): Promise<void> {
  const cg = world.makeCgroup(cgroupName);
  cgroups.set(id, cg.path);
  const r = await egressd.client.send('PUT', `/api/v1/computers/${id}`, { body: { cgroup: cg.relative } });
  if (r.status !== 201) throw new Error(`register ${id}: ${r.status} ${r.text}`);
}

async function putPolicy(id: string, body: object): Promise<void> {
  const r = await egressd.client.send('PUT', `/api/v1/computers/${id}/network-policy?wait=10000`, { body });
  if (r.status !== 200) throw new Error(`policy of ${id}: ${r.status} ${r.text}`);
}

async function policy(
  id: string,
): Promise<{ mode: string; audit: boolean; rules: unknown[]; enforcement: { state: string } }> {
  const r = await egressd.client.send('GET', `/api/v1/computers/${id}/network-policy`);
  return (r.body as { data: Awaited<ReturnType<typeof policy>> }).data;
}

/** Opens a view by its hash, as a link would. */
async function show(page: Page, hash: string): Promise<void> {
  await page.evaluate((h: string) => {
    location.hash = h;
  }, hash);
}

async function signIn(page: Page, key: string): Promise<void> {
  await page.waitForSelector('#key');
  await page.type('#key', key);
  await page.keyboard.press('Enter');
}

const rowIds = (page: Page) =>
  page.$$eval('#computer-rows tr', (rows) => rows.map((r) => (r as HTMLElement).dataset['id']));

test.before(async () => {
  // First: without chromium there is nothing to test, and the error says how to install it.
  browser = await launchChromium();
  world = await createWorld();
  egressd = await startEgressd({ world, node: 'ui-node' });
  await register('watched');
  await putPolicy('watched', { mode: 'isolated' });
  await register('newcomer');
  await putPolicy('newcomer', { mode: 'isolated', audit: true });
  // Two tenants' computers, in their id namespaces (the admin registers them for them).
  await register('acme~box', 'acme/box');
  await register('globex~box', 'globex/box');
});

test.after.always(async () => {
  await browser?.close();
  await egressd?.stop();
  await world?.destroy();
  if (Object.keys(figures).length > 0) {
    mkdirSync(SCREENSHOTS, { recursive: true });
    writeFileSync(path.join(SCREENSHOTS, 'figures.json'), `${JSON.stringify(figures, null, 2)}\n`);
  }
});

test.serial(
  'sign in with the admin key typed into the form: the list of computers, the CSP, the page weight',
  async (t) => {
    const opened = await openPage(browser);
    admin = opened.page;
    recorded.push(opened.seen);
    const response = await admin.goto(`${egressd.origin}/ui/`, { waitUntil: 'networkidle0' });
    t.is(response?.headers()['content-security-policy'], CONTENT_SECURITY_POLICY);
    t.is(response?.headers()['x-frame-options'], 'DENY');
    // What the first visit transferred (nothing cached yet): the page, its script and style.
    const load = await admin.evaluate(() => {
      const entries = [
        ...performance.getEntriesByType('navigation'),
        ...performance.getEntriesByType('resource'),
      ] as PerformanceResourceTiming[];
      const files = entries.filter((e) => /\/ui\/([^/]*\.(js|css|html))?$/.test(new URL(e.name).pathname));
      return {
        files: files.length,
        transferred: files.reduce((n, e) => n + e.transferSize, 0),
        encoded: files.reduce((n, e) => n + e.encodedBodySize, 0),
        decoded: files.reduce((n, e) => n + e.decodedBodySize, 0),
        firstRender: performance.getEntriesByName('egressd:first-render')[0]?.startTime ?? Number.NaN,
      };
    });
    t.is(load.files, 3, 'index.html, one script, one style sheet');
    t.true(load.encoded < load.decoded / 2, `gzipped on the wire: ${load.encoded} of ${load.decoded} bytes`);
    figures['page_kb_transferred'] = Math.round(load.transferred / 102.4) / 10;
    figures['page_kb_gzipped_bodies'] = Math.round(load.encoded / 102.4) / 10;
    figures['page_kb_uncompressed'] = Math.round(load.decoded / 102.4) / 10;
    figures['first_render_cold_ms'] = Math.round(load.firstRender);

    await signIn(admin, ADMIN_KEY);
    await admin.waitForSelector('#computer-rows tr[data-id="watched"]', { timeout: seconds(10) });
    t.regex(await admin.$eval('#who', (e) => e.textContent ?? ''), /Signed in as admin/);
    t.deepEqual((await rowIds(admin)).sort(), ['acme~box', 'globex~box', 'newcomer', 'watched']);

    // A reload keeps the session (the cookie; the CSRF token comes again from GET /ui/session).
    await admin.reload({ waitUntil: 'domcontentloaded' });
    await admin.waitForSelector('#computer-rows tr[data-id="watched"]', { timeout: seconds(10) });
    const warm = await admin.evaluate(() => ({
      firstRender: performance.getEntriesByName('egressd:first-render')[0]?.startTime ?? Number.NaN,
      listShown: performance.now(),
    }));
    figures['first_render_warm_ms'] = Math.round(warm.firstRender);
    figures['list_shown_warm_ms'] = Math.round(warm.listShown);
    // Filter and sort.
    await admin.type('#filter', 'box');
    await waitFor('two rows', async () => (await rowIds(admin)).length === 2, 3000);
    await admin.click('th:first-child button');
    t.deepEqual(await rowIds(admin), ['globex~box', 'acme~box'], 'sorted by id, descending');
    t.is(await admin.$eval('th:first-child', (e) => e.getAttribute('aria-sort')), 'descending');
    await admin.click('#filter', { count: 3 });
    await admin.keyboard.press('Backspace');
    await waitFor('four rows', async () => (await rowIds(admin)).length === 4, 3000);
    await screenshot(admin, 'list');
    // A narrow window: no sideways scrolling.
    await admin.setViewport({ width: 420, height: 800 });
    t.true(await admin.evaluate(() => document.documentElement.scrollWidth <= 420), 'fits 420 px');
    await screenshot(admin, 'list-narrow');
    await admin.setViewport({ width: 1280, height: 800 });
    t.log(`page: ${JSON.stringify(load)}; warm reload: ${JSON.stringify(warm)}`);
  },
);

test.serial("a computer's denial appears live after a refused connect", async (t) => {
  await show(admin, '#/computers/watched');
  await waitForText(admin, 'p[role=status]', 'Live stream: live', seconds(10));
  const before = Date.now();
  t.deepEqual(await world.probeResults({ cgroup: cgroups.get('watched') as string }, 'tcp:192.0.2.2:80'), [
    'EPERM',
  ]);
  const row = await waitForText(admin, '#event-rows tr', '192.0.2.2:80', seconds(5));
  const shownAt = Date.now();
  t.regex(row, /mode/);
  const markedAt = await admin.evaluate(() => {
    const marks = performance.getEntriesByName('egressd:live-event');
    return performance.timeOrigin + (marks[marks.length - 1]?.startTime ?? Number.NaN);
  });
  figures['refused_connect_to_live_event_ms'] = Math.round(markedAt - before);
  t.log(
    `refused connect → event in the page: ${Math.round(markedAt - before)} ms (seen by the test after ${shownAt - before} ms)`,
  );
  await waitForText(admin, '#chart-summary', '1 mode', seconds(3));
  t.regex(await admin.$eval('#enforcement', (e) => e.textContent ?? ''), /enforced/);
  await screenshot(admin, 'computer', true);
  // The list counts it (the API, ?include=denials_1m), and sorting by denials puts it first of all rows.
  await show(admin, '#/computers');
  await waitForText(
    admin,
    '#computer-rows tr[data-id="watched"] td[data-label="Denials (1 min)"]',
    '1',
    seconds(15),
  );
  await admin.click('th:last-child button');
  t.is(await admin.$eval('th:last-child', (e) => e.getAttribute('aria-sort')), 'descending');
  t.is((await rowIds(admin))[0], 'watched');
});

test.serial("an invalid rule's error is shown beside that rule's port field", async (t) => {
  await show(admin, '#/computers/watched/edit');
  await admin.waitForSelector('#field-mode');
  await admin.select('#field-mode', 'allowlist');
  await admin.click('::-p-text(Add a rule)');
  await admin.click('::-p-text(Add a rule)');
  await admin.type('#field-rules-0-host', 'example.com');
  await admin.type('#field-rules-0-port', '443');
  await admin.type('#field-rules-1-host', 'example.org');
  await admin.type('#field-rules-1-port', '70000');
  await admin.click('button[type=submit]');
  const message = await waitForText(admin, '#field-rules-1-port-error', '65535', seconds(5));
  t.regex(message, /from 1 to 65535/);
  const field = await admin.$eval('#field-rules-1-port', (e) => ({
    invalid: e.getAttribute('aria-invalid'),
    describedBy: e.getAttribute('aria-describedby'),
    besideIt: e.parentElement?.contains(document.getElementById('field-rules-1-port-error')) ?? false,
    focused: document.activeElement === e,
  }));
  t.deepEqual(field, {
    invalid: 'true',
    describedBy: 'field-rules-1-port-error',
    besideIt: true,
    focused: true,
  });
  t.is(await admin.$eval('#field-rules-0-port', (e) => e.getAttribute('aria-invalid')), null);
  t.regex(await admin.$eval('#save-result', (e) => e.textContent ?? ''), /HTTP 400/);
  t.is((await policy('watched')).mode, 'isolated', 'nothing was saved');
  await screenshot(admin, 'edit', true);
});

test.serial('apply a suggestion: audit, a connect observed, Apply, and the state is enforced', async (t) => {
  const cg = cgroups.get('newcomer') as string;
  t.deepEqual(await world.probeResults({ cgroup: cg }, 'tcp:192.0.2.2:80'), ['ok'], 'audit lets it through');
  // The agent merges observations every 5 s.
  await waitFor(
    'an observation in the suggestion',
    async () => {
      const r = await egressd.client.send('GET', '/api/v1/computers/newcomer/network-policy/suggestion');
      return (r.body as { data: { policy: { rules: unknown[] } } }).data.policy.rules.length > 0;
    },
    15_000,
  );
  await show(admin, '#/computers/newcomer/suggestion');
  const added = await waitForText(admin, 'ul.diff li', '192.0.2.2:80/tcp', seconds(10));
  t.regex(added, /added/);
  await screenshot(admin, 'suggestion', true);
  const requestsBefore = recorded[0]?.requests.length ?? 0;
  await admin.click('#apply');
  const result = await waitForText(admin, '#apply-result', 'HTTP 200', seconds(15));
  t.regex(result, /enforced/);
  const put = recorded[0]?.requests.slice(requestsBefore).find((r) => r.method === 'PUT');
  t.truthy(put?.headers['x-csrf-token'], 'the PUT carries the CSRF token');
  t.regex(put?.headers['if-match'] ?? '', /^"\d+"$/);
  const now = await policy('newcomer');
  t.like(now, { mode: 'allowlist', audit: false, enforcement: { state: 'enforced' } });
  t.deepEqual(await world.probeResults({ cgroup: cg }, 'tcp:192.0.2.2:80', 'tcp:192.0.2.1:80'), [
    'ok',
    'EPERM',
  ]);
  await screenshot(admin, 'suggestion-applied', true);
});

test.serial("a tenant key sees its tenant's computers only", async (t) => {
  const created = await egressd.client.send('POST', '/api/v1/keys', { body: { tenant: 'acme' } });
  t.is(created.status, 201);
  const key = (created.body as { data: { key: string } }).data.key;
  keys.push(key);
  const context = await browser.createBrowserContext();
  try {
    const { page, seen } = await openPage(context);
    recorded.push(seen);
    await page.goto(`${egressd.origin}/ui/`);
    await signIn(page, key);
    await page.waitForSelector('#computer-rows tr[data-id="acme~box"]', { timeout: seconds(10) });
    t.deepEqual(await rowIds(page), ['acme~box']);
    t.regex(await page.$eval('#who', (e) => e.textContent ?? ''), /tenant acme/);
    await show(page, '#/computers/globex~box');
    await waitForText(page, '.error', 'computer not found', seconds(5));
  } finally {
    await context.close();
  }
});

test.serial('a cross-site POST, or one without the CSRF token, is refused', async (t) => {
  const cookie = (await admin.cookies()).find((c) => c.name === 'egressd_session');
  t.like(cookie, { httpOnly: true, sameSite: 'Strict' });
  adminCookie = `${cookie?.name}=${cookie?.value}`;
  const post = (headers: Record<string, string>) =>
    fetch(`${egressd.origin}/api/v1/keys`, {
      method: 'POST',
      headers: { cookie: adminCookie, 'content-type': 'application/json', ...headers },
      body: JSON.stringify({ tenant: 'mallory' }),
    }).then(async (r) => ({
      status: r.status,
      code: ((await r.json()) as { error?: { code: string } }).error?.code,
    }));
  t.deepEqual(await post({ origin: 'http://attacker.example', 'sec-fetch-site': 'cross-site' }), {
    status: 403,
    code: 'cross_site_request',
  });
  t.deepEqual(await post({ origin: egressd.origin, 'sec-fetch-site': 'same-origin' }), {
    status: 403,
    code: 'csrf_token_required',
  });
  t.deepEqual(await post({ 'x-csrf-token': 'not-the-token' }), { status: 403, code: 'csrf_token_invalid' });
  const keysNow = await egressd.client.send('GET', '/api/v1/keys');
  t.false(JSON.stringify(keysNow.body).includes('mallory'), 'no key was made');
});

test.serial("a node that lost its store: the admin's page says so, and what to do", async (t) => {
  await show(admin, '#/computers');
  t.is(await admin.$('#store-lost'), null, 'no banner while every node follows its store');
  // The store's identity gone, as in a Redis that came back empty (sessions aside, so the page stays
  // signed in): the agent keeps what it enforces and follows nothing until an operator accepts.
  const redis = new Redis({ path: path.join(egressd.stateDir, 'redis', 'redis.sock') });
  try {
    t.is(await redis.del(redisKeys.storeIdentity()), 1);
  } finally {
    redis.disconnect();
  }
  const text = await waitForText(admin, '#store-lost', 'egressd store accept', seconds(40));
  t.regex(text, /^1 node has lost the store/);
  await screenshot(admin, 'store-lost');
});

test.serial(
  'signing out ends the session: a reload shows the sign-in, the old cookie gets 401',
  async (t) => {
    await show(admin, '#/computers');
    await admin.click('#sign-out');
    await waitForText(admin, '#sign-in-error', 'Signed out.', seconds(5));
    await admin.reload({ waitUntil: 'networkidle0' });
    await admin.waitForSelector('#key');
    t.is(await admin.$('#computer-rows'), null);
    const r = await fetch(`${egressd.origin}/api/v1/computers`, { headers: { cookie: adminCookie } });
    t.is(r.status, 401);
  },
);

test.serial(
  'no key in any URL or header the pages sent, nor in storage; nothing broke the CSP',
  async (t) => {
    const requests = recorded.flatMap((r) => r.requests);
    t.true(requests.length > 20, `${requests.length} requests recorded`);
    for (const key of keys) {
      for (const form of [key, encodeURIComponent(key)]) {
        t.deepEqual(
          requests.filter((r) => r.url.includes(form)).map((r) => r.url),
          [],
        );
        t.deepEqual(
          requests.filter((r) => JSON.stringify(r.headers).includes(form)).map((r) => r.url),
          [],
        );
      }
    }
    t.true(
      requests.every((r) => r.url.startsWith(`${egressd.origin}/`)),
      'nothing from another origin',
    );
    t.deepEqual(await admin.evaluate(() => [localStorage.length, sessionStorage.length]), [0, 0]);
    t.deepEqual(
      recorded.flatMap((r) => r.problems),
      [],
    );
  },
);
