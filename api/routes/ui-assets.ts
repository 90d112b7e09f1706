/**
 * The dashboard's files, served under /ui/ from the directory that
 * `npm run build` fills (dist/ui: scripts/build-ui.mjs bundles ui/ there).
 * Its manifest.json names the files to serve; they are read once, when the
 * app is built, into a table of exact names: a request names a file of the
 * table or gets 404, so no path it sends (`..`, encoded or not) ever reaches
 * the file system, and nothing else in the directory is served.
 *
 * Every answer under /ui (files, errors, /ui/session) carries the headers of
 * UI_HEADERS: a Content-Security-Policy that allows only this origin's
 * scripts, styles and requests (no inline script or style, no framing, and
 * Trusted Types required: no string can be assigned to an HTML sink such as
 * innerHTML), and no caching of HTML or session answers. The bundle's names
 * carry a hash of their content (the manifest's `immutable`): browsers keep
 * them for a year without asking again; any other file is revalidated (ETag).
 * Text files are gzipped once, at load, and sent so to a client that accepts
 * it (`Vary: Accept-Encoding`; the gzipped body has its own ETag).
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
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
  "require-trusted-types-for 'script'",
  "trusted-types 'none'",
].join('; ');

export const UI_HEADERS: Readonly<Record<string, string>> = {
  'Content-Security-Policy': CONTENT_SECURITY_POLICY,
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer',
  'X-Frame-Options': 'DENY',
  'Cross-Origin-Opener-Policy': 'same-origin',
  'Cross-Origin-Resource-Policy': 'same-origin',
};

/** The file types served; a manifest naming another is refused. */
const TYPES: Readonly<Record<string, string>> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.woff2': 'font/woff2',
};
/** Types worth gzipping (the others are compressed already). */
const COMPRESSIBLE = /^(text\/|image\/svg)/;
/** A year: the longest a browser is told to keep a file whose name changes with its content. */
const IMMUTABLE = 'max-age=31536000, immutable';
const NAME_RE = /^[A-Za-z0-9_-][A-Za-z0-9._-]*(\/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$/;

interface Body {
  bytes: Buffer;
  etag: string;
}

interface Asset {
  type: string;
  identity: Body;
  /** Absent when gzip would not make it smaller, or the type is compressed already. */
  gzip: Body | undefined;
  /** Its name carries a hash of its content. */
  immutable: boolean;
}

export type Assets = ReadonlyMap<string, Asset>;

const bodyOf = (bytes: Buffer): Body => ({
  bytes,
  etag: `"${createHash('sha256').update(bytes).digest('base64url').slice(0, 22)}"`,
});

/** What `npm run build` writes beside the files (scripts/build-ui.mjs). */
interface Manifest {
  files: string[];
  immutable: string[];
}

/**
 * The files `dir`'s manifest.json names, by their path relative to it; empty
 * when there is no manifest (not built). A manifest naming a path that could
 * leave the directory, or a type not served, throws: the build is broken.
 */
export function loadAssets(dir: string): Assets {
  let manifest: Manifest;
  try {
    manifest = JSON.parse(readFileSync(path.join(dir, 'manifest.json'), 'utf8'));
  } catch {
    return new Map();
  }
  const assets = new Map<string, Asset>();
  const immutable = new Set(manifest.immutable);
  for (const name of manifest.files) {
    const type = TYPES[path.extname(name)];
    if (!NAME_RE.test(name) || name.split('/').includes('..') || type === undefined) {
      throw new Error(
        `${dir}/manifest.json: "${name}" is not a file the dashboard may serve; run npm run build`,
      );
    }
    const bytes = readFileSync(path.join(dir, name));
    const gz = COMPRESSIBLE.test(type) ? gzipSync(bytes, { level: 9 }) : undefined;
    assets.set(name, {
      type,
      identity: bodyOf(bytes),
      gzip: gz && gz.length < bytes.length ? bodyOf(gz) : undefined,
      immutable: immutable.has(name),
    });
  }
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
    if (asset.gzip) ctx.vary('Accept-Encoding');
    const gzip = asset.gzip !== undefined && ctx.acceptsEncodings('gzip', 'identity') === 'gzip';
    const body = gzip && asset.gzip ? asset.gzip : asset.identity;
    if (gzip) ctx.set('Content-Encoding', 'gzip');
    if (!asset.type.startsWith('text/html')) {
      ctx.set('Cache-Control', asset.immutable ? IMMUTABLE : 'no-cache');
      ctx.etag = body.etag;
      ctx.status = 200;
      if (ctx.fresh) {
        ctx.status = 304;
        return;
      }
    }
    ctx.body = body.bytes;
  };
}
