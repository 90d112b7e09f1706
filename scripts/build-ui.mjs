#!/usr/bin/env node
// Bundles the dashboard into dist/ui with esbuild: ui/main.tsx (Preact, uPlot and the views) into one
// minified script, ui/app.css (with uPlot's style sheet) into one style sheet, both named by a hash of
// their content, so that the API can let browsers keep them for good. ui/index.html is written with
// those names, and manifest.json lists the files the API serves (api/routes/ui-assets.ts): nothing
// else in dist/ui is served (tsc's own output of ui/*.tsx lands there too, for the unit tests).
// Prints each file's size, raw and gzipped.
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { build } from 'esbuild';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const out = path.join(root, 'dist/ui');

// Bundles of earlier builds.
mkdirSync(out, { recursive: true });
for (const name of readdirSync(out, { withFileTypes: true }).map((e) => e.name)) {
  if (/^(app|style)-[A-Z0-9]+\.(js|css)$/.test(name)) rmSync(path.join(out, name));
}

const result = await build({
  absWorkingDir: root,
  entryPoints: { app: 'ui/main.tsx', style: 'ui/app.css' },
  outdir: out,
  entryNames: '[name]-[hash]',
  bundle: true,
  minify: true,
  format: 'esm',
  target: ['chrome111', 'firefox113', 'safari16.4'],
  jsx: 'automatic',
  jsxImportSource: 'preact',
  // Preact's and uPlot's licence notices, kept at the end of the files.
  legalComments: 'eof',
  metafile: true,
  logLevel: 'warning',
});

const outputs = Object.keys(result.metafile.outputs).map((file) => path.relative(out, path.join(root, file)));
const js = outputs.find((f) => /^app-.*\.js$/.test(f));
const css = outputs.find((f) => /^style-.*\.css$/.test(f));
if (!js || !css) throw new Error(`esbuild wrote ${outputs.join(', ')}: no app-*.js or style-*.css`);

const html = readFileSync(path.join(root, 'ui/index.html'), 'utf8')
  .replace('{{app.js}}', js)
  .replace('{{style.css}}', css);
if (html.includes('{{')) throw new Error('ui/index.html names a file the build does not make');
writeFileSync(path.join(out, 'index.html'), html);
writeFileSync(
  path.join(out, 'manifest.json'),
  `${JSON.stringify({ files: ['index.html', js, css], immutable: [js, css] }, null, 2)}\n`,
);

let raw = 0;
let zipped = 0;
for (const name of ['index.html', js, css]) {
  const body = readFileSync(path.join(out, name));
  const gz = gzipSync(body, { level: 9 }).length;
  raw += body.length;
  zipped += gz;
  console.log(`dist/ui/${name}: ${(body.length / 1024).toFixed(1)} KiB, ${(gz / 1024).toFixed(1)} KiB gzipped`);
}
console.log(`dashboard: ${(raw / 1024).toFixed(1)} KiB, ${(zipped / 1024).toFixed(1)} KiB gzipped`);
