/**
 * The tree reads one way: the folders of the source (not tests, not
 * benchmarks) import each other along the arrows below and never back, and a
 * source file stays under about 400 lines unless it is listed here with why.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const SOURCE_ROOTS = ['policy', 'store', 'api', 'daemon', 'cli', 'ui'];

/** What each top-level part may import besides itself. */
const ALLOWED: Record<string, string[]> = {
  policy: [],
  store: ['policy'],
  api: ['policy', 'store'],
  daemon: ['policy', 'store'],
  cli: ['policy', 'store', 'api', 'daemon'],
  // The dashboard is bundled for the browser alone: it mirrors the API's shapes (ui/api.ts), imports none.
  ui: [],
};

/** Files allowed over the limit, and why. */
const LONG_FILES: Record<string, string> = {
  'api/openapi.ts': 'the OpenAPI document: data, one schema per answer',
};
/** About 400: room for a header comment, not for a second job. */
const MAX_LINES = 430;

function sources(dir: string): string[] {
  return readdirSync(path.join(root, dir), { withFileTypes: true }).flatMap((e) => {
    const rel = path.join(dir, e.name);
    if (e.isDirectory()) return sources(rel);
    return /\.tsx?$/.test(e.name) ? [rel] : [];
  });
}

const files = SOURCE_ROOTS.flatMap(sources);

/** folder → folders it imports (relative imports only; packages are not arrows). */
function folderGraph(): Map<string, Set<string>> {
  const graph = new Map<string, Set<string>>();
  for (const file of files) {
    const text = readFileSync(path.join(root, file), 'utf8');
    for (const m of text.matchAll(/(?:from|import)\s*\(?\s*'(\.{1,2}\/[^']+)'/g)) {
      const from = path.dirname(file);
      const to = path.dirname(path.normalize(path.join(from, m[1] ?? '')));
      if (from === to) continue;
      if (!graph.has(from)) graph.set(from, new Set());
      graph.get(from)?.add(to);
    }
  }
  return graph;
}

test('each top-level part imports only the parts below it', (t) => {
  const wrong: string[] = [];
  for (const [from, targets] of folderGraph()) {
    const part = from.split('/')[0] ?? from;
    for (const to of targets) {
      const target = to.split('/')[0] ?? to;
      if (target !== part && !ALLOWED[part]?.includes(target)) wrong.push(`${from} -> ${to}`);
    }
  }
  t.deepEqual(wrong, []);
});

test('no folder imports a folder that imports it back (no cycle of any length)', (t) => {
  const graph = folderGraph();
  const cycles: string[] = [];
  const state = new Map<string, 'open' | 'done'>();
  const visit = (node: string, trail: string[]): void => {
    if (state.get(node) === 'done') return;
    if (state.get(node) === 'open') {
      cycles.push([...trail.slice(trail.indexOf(node)), node].join(' -> '));
      return;
    }
    state.set(node, 'open');
    for (const next of graph.get(node) ?? []) visit(next, [...trail, node]);
    state.set(node, 'done');
  };
  for (const node of graph.keys()) visit(node, []);
  t.deepEqual(cycles, []);
});

test(`source files stay under ${MAX_LINES} lines (or say why)`, (t) => {
  const long = files
    .map((f) => ({ f, lines: readFileSync(path.join(root, f), 'utf8').trimEnd().split('\n').length }))
    .filter(({ f, lines }) => lines > MAX_LINES && !(f in LONG_FILES))
    .map(({ f, lines }) => `${f}: ${lines} lines`);
  t.deepEqual(long, []);
});
