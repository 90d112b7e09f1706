/**
 * The dashboard's files, served under /ui/ from the directory that
 * `npm run build` fills (dist/ui: ui/*.html and ui/*.css copied, ui/*.ts
 * compiled). They are read once, when the app is built, into a table of
 * exact names: a request names a file of the table or gets 404, so no path
 * it sends (`..`, encoded or not) ever reaches the file system.
 *
 * Every answer under /ui (files, errors, /ui/session) carries the headers of
 * UI_HEADERS: a Content-Security-Policy that allows only this origin's
 * scripts, styles and requests (no inline script or style, no framing), and
 * no caching of HTML or session answers. Other files are revalidated (ETag):
 * their names carry no hash yet.
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Middleware } from 'koa';
import { ApiError } from '../errors.js';
import type { ApiState } from './deps.js';

/** dist/ui (this file is dist/api/routes/ui-assets.js). */
export const DEFAULT_UI_DIR = fileURLToPath(new URL('../../ui/', import.meta.url));

export const CONTENT_SECURITY_POLICY = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self'",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ');

export const UI_HEADERS: Readonly<Record<string, string>> = {
  'Content-Security-Policy': CONTENT_SECURITY_POLICY,
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer',
  'X-Frame-Options': 'DENY',
  'Cross-Origin-Opener-Policy': 'same-origin',
  'Cross-Origin-Resource-Policy': 'same-origin',
};

/** The file types served; others in the directory (source maps, say) are not. */
const TYPES: Readonly<Record<string, string>> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.woff2': 'font/woff2',
};

interface Asset {
  body: Buffer;
  type: string;
  etag: string;
}

export type Assets = ReadonlyMap<string, Asset>;

/** The files below `dir` by their path relative to it ('/'-separated); empty when it does not exist. */
export function loadAssets(dir: string): Assets {
  const assets = new Map<string, Asset>();
  const walk = (rel: string) => {
    let names: string[];
    try {
      names = readdirSync(path.join(dir, rel));
    } catch {
      return;
    }
    for (const name of names) {
      if (name.startsWith('.')) continue;
      const relName = rel === '' ? name : `${rel}/${name}`;
      const full = path.join(dir, relName);
      if (statSync(full).isDirectory()) {
        walk(relName);
        continue;
      }
      const type = TYPES[path.extname(name)];
      if (type === undefined) continue;
      const body = readFileSync(full);
      const etag = `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"`;
      assets.set(relName, { body, type, etag });
    }
  };
  walk('');
  return assets;
}

/**
 * The /ui middleware: the headers on everything under /ui, the files on
 * GET and HEAD; /ui/session goes on to its routes.
 */
export function uiAssets(assets: Assets): Middleware<ApiState> {
  return async (ctx, next) => {
    if (ctx.path !== '/ui' && !ctx.path.startsWith('/ui/')) return next();
    ctx.set(UI_HEADERS);
    ctx.set('Cache-Control', 'no-store');
    ctx.state.route = '/ui/*';
    if (ctx.path === '/ui/session') {
      ctx.state.route = undefined;
      return next();
    }
    if (ctx.method !== 'GET' && ctx.method !== 'HEAD') {
      ctx.set('Allow', 'GET, HEAD');
      throw new ApiError(405, 'method_not_allowed', `${ctx.method} is not allowed here; use GET, HEAD`);
    }
    if (ctx.path === '/ui') {
      ctx.status = 308;
      ctx.redirect('/ui/');
      return;
    }
    // The path as sent, undecoded: a name of the table or nothing.
    const name = ctx.path === '/ui/' ? 'index.html' : ctx.path.slice('/ui/'.length);
    const asset = assets.get(name);
    if (!asset) {
      throw new ApiError(
        404,
        'not_found',
        assets.size === 0
          ? 'the dashboard is not built: run npm run build (it fills dist/ui)'
          : `no such file of the dashboard: ${ctx.path}`,
      );
    }
    ctx.type = asset.type;
    if (!asset.type.startsWith('text/html')) {
      ctx.set('Cache-Control', 'no-cache');
      ctx.etag = asset.etag;
      ctx.status = 200;
      if (ctx.fresh) {
        ctx.status = 304;
        return;
      }
    }
    ctx.body = asset.body;
  };
}
