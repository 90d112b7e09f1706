/**
 * A real browser for the dashboard's tests: Debian's chromium, driven by
 * puppeteer-core (which downloads no browser of its own). It is required,
 * not optional: without /usr/bin/chromium the tests fail, saying how to
 * install it (scripts/setup.sh installs `chromium` and `fonts-dejavu-core`,
 * the font the screenshots are drawn with). Headless, and --no-sandbox: the
 * privileged tests run as root, where chromium's own sandbox cannot start.
 *
 * Each page's requests (URL and headers) and its console errors, page errors
 * and Content-Security-Policy violations are recorded for the tests to check;
 * screenshots go to test-output/ui/ (ignored by git).
 */
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import puppeteer, { type Browser, type BrowserContext, type Page } from 'puppeteer-core';
import { REPO_ROOT } from './world.js';

export const CHROMIUM = '/usr/bin/chromium';
export const SCREENSHOTS = path.join(REPO_ROOT, 'test-output/ui');

export async function launchChromium(): Promise<Browser> {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `${CHROMIUM} not found: the dashboard's browser tests need Debian's chromium; ` +
        'install it with `apt-get install chromium fonts-dejavu-core` (scripts/setup.sh does)',
    );
  }
  return puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--font-render-hinting=none'],
  });
}

export interface Recorded {
  requests: Array<{ url: string; method: string; headers: Record<string, string> }>;
  /** Console errors, page errors, CSP and Trusted Types violations. */
  problems: string[];
}

/** A page of `context` at 1280×800 whose requests and problems go to the returned record. */
export async function openPage(context: BrowserContext | Browser): Promise<{ page: Page; seen: Recorded }> {
  const page = await context.newPage();
  await page.setViewport({ width: 1280, height: 800 });
  const seen: Recorded = { requests: [], problems: [] };
  page.on('request', (r) => seen.requests.push({ url: r.url(), method: r.method(), headers: r.headers() }));
  page.on('pageerror', (e) => seen.problems.push(`page error: ${(e as Error).message}`));
  page.on('console', (m) => {
    // A refused request is logged as an error by the browser; the tests make some on purpose (401).
    if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) seen.problems.push(m.text());
  });
  // Violations are events in the page, and may come before any console message.
  await page.evaluateOnNewDocument(() => {
    document.addEventListener('securitypolicyviolation', (e) =>
      console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`),
    );
  });
  return { page, seen };
}

/** Saves the page (or the whole of it) as test-output/ui/NAME.png; answers the path. */
export async function screenshot(page: Page, name: string, fullPage = false): Promise<string> {
  mkdirSync(SCREENSHOTS, { recursive: true });
  const file = path.join(SCREENSHOTS, `${name}.png`);
  await page.screenshot({ path: file as `${string}.png`, fullPage });
  return file;
}

/** The text of the first element `selector` matches that holds `text`, once there is one (a wait of `ms`). */
export async function waitForText(page: Page, selector: string, text: string, ms: number): Promise<string> {
  const found = await page.waitForFunction(
    (s: string, t: string) =>
      [...document.querySelectorAll(s)].map((e) => e.textContent ?? '').find((x) => x.includes(t)),
    { timeout: ms },
    selector,
    text,
  );
  return String(await found.jsonValue());
}
