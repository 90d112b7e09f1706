/**
 * The OpenAPI document is true: every route of the router is documented and
 * every documented operation is a route; every $ref resolves; the served
 * document is the same; the seed's example bodies validate against the
 * request schemas. (Every reply of every API test is checked against it by
 * harness.ts.)
 */
import test from 'ava';
import { MODES } from '../../policy/types.js';
import { type Harness, startHarness } from './harness.js';
import { resolveRef, validate } from './openapi-check.js';

let h: Harness;
test.before(async () => {
  h = await startHarness();
});
test.after.always(async () => {
  await h?.close();
});

type Json = Record<string, unknown>;

function routes(): Set<string> {
  const out = new Set<string>();
  for (const layer of h.app.router.stack) {
    const path = String(layer.path).replace(/:(\w+)/g, '{$1}');
    for (const method of layer.methods) {
      if (method !== 'HEAD') out.add(`${method.toLowerCase()} ${path}`);
    }
  }
  return out;
}

async function doc(): Promise<Json> {
  const r = await h.call('GET', '/api/v1/openapi.json', { key: '' });
  t_assert(r.status === 200, 'openapi.json served');
  return r.body as Json;
}

function t_assert(ok: boolean, what: string): void {
  if (!ok) throw new Error(what);
}

function documented(d: Json): Set<string> {
  const out = new Set<string>();
  for (const [path, item] of Object.entries(d['paths'] as Record<string, Json>)) {
    for (const method of ['get', 'put', 'post', 'delete', 'patch']) {
      if (item[method]) out.add(`${method} ${path}`);
    }
  }
  return out;
}

test('the document is OpenAPI 3.1 and served without a key', async (t) => {
  const d = await doc();
  t.is(d['openapi'], '3.1.0');
  t.truthy((d['info'] as Json)['title']);
});

test('every route is documented and every documented operation is a route', async (t) => {
  const d = await doc();
  const r = routes();
  const o = documented(d);
  t.true(r.size >= 13);
  t.deepEqual(
    [...r].filter((x) => !o.has(x)),
    [],
    'routes missing from the document',
  );
  t.deepEqual(
    [...o].filter((x) => !r.has(x)),
    [],
    'documented operations without a route',
  );
});

test('every $ref resolves and every path parameter is declared', async (t) => {
  const d = await doc();
  const refs: string[] = [];
  const walk = (node: unknown) => {
    if (Array.isArray(node)) node.forEach(walk);
    else if (typeof node === 'object' && node !== null) {
      for (const [k, v] of Object.entries(node)) {
        if (k === '$ref' && typeof v === 'string') refs.push(v);
        else walk(v);
      }
    }
  };
  walk(d);
  t.true(refs.length > 10);
  for (const ref of refs) t.notThrows(() => resolveRef(d, ref), ref);
  for (const [path, item] of Object.entries(d['paths'] as Record<string, Json>)) {
    const names = [...path.matchAll(/\{(\w+)\}/g)].map((m) => m[1]);
    const declared = ((item['parameters'] ?? []) as Json[])
      .filter((p) => p['in'] === 'path')
      .map((p) => p['name']);
    t.deepEqual(declared.sort(), names.sort(), path);
    for (const method of ['get', 'put', 'post', 'delete']) {
      const op = item[method] as Json | undefined;
      if (op) t.truthy(op['operationId'], `${method} ${path} has an operationId`);
    }
  }
});

test('request schemas accept the seed examples and reject what the API rejects', async (t) => {
  const d = await doc();
  const input = { $ref: '#/components/schemas/PolicyInput' };
  const good = [
    { mode: 'allowlist', rules: [{ host: 'github.com', port: 443, protocol: 'tcp' }] },
    { mode: 'denylist', rules: [{ host: '185.220.0.0/16' }] },
    { mode: 'isolated' },
    { mode: 'denylist', rules: [{ host: 'evil.example' }], audit: true },
    { mode: 'allowlist', rules: [{ host: 'cdn.example', port: 443, protocol: 'tcp', bind_name: false }] },
  ];
  for (const body of good) t.deepEqual(validate(d, input, body, '$'), [], JSON.stringify(body));
  t.deepEqual(
    ((resolveRef(d, '#/components/schemas/PolicyInput')['properties'] as Json)['mode'] as Json)['enum'],
    [...MODES],
  );
  const bad = [
    { mode: 'x' },
    { mode: 'allowlist', rules: [{ host: 'a', port: 0 }] },
    { mode: 'isolated', extra: 1 },
    { mode: 'isolated', audit: 'yes' },
    { mode: 'allowlist', rules: [{ host: 'cdn.example', bind_name: 'no' }] },
  ];
  for (const body of bad) t.notDeepEqual(validate(d, input, body, '$'), [], JSON.stringify(body));
  // And the API agrees.
  await h.call('PUT', '/api/v1/computers/oa-1', { body: { cgroup: 'oa/1' } });
  for (const body of good) {
    const r = await h.call('PUT', '/api/v1/computers/oa-1/network-policy?wait=0', { body });
    t.true(r.status === 202 || r.status === 200, JSON.stringify(body));
  }
  for (const body of bad) {
    t.is((await h.call('PUT', '/api/v1/computers/oa-1/network-policy?wait=0', { body })).status, 400);
  }
});

test('replies of every operation conform (checked by the harness)', async (t) => {
  // One request per documented operation and its main outcomes; harness.call throws on any mismatch.
  const calls: Array<[string, string, unknown?]> = [
    ['GET', '/healthz'],
    ['GET', '/readyz'],
    ['GET', '/metrics'],
    ['PUT', '/api/v1/computers/oa-2', { cgroup: 'oa/2', tenant: 'oa' }],
    ['PUT', '/api/v1/computers/oa-2', { cgroup: 'oa/2b' }],
    ['PUT', '/api/v1/computers/oa-3', { cgroup: 'oa/2b' }],
    ['GET', '/api/v1/computers/oa-2'],
    ['GET', '/api/v1/computers?limit=1'],
    ['GET', '/api/v1/computers/oa-2/network-policy'],
    [
      'PUT',
      '/api/v1/computers/oa-2/network-policy?wait=0',
      { mode: 'allowlist', rules: [{ host: 'a.example' }] },
    ],
    [
      'PUT',
      '/api/v1/computers/oa-2/network-policy?wait=0',
      { mode: 'allowlist', rules: [{ host: 'a.example', bind_name: false }] },
    ],
    ['GET', '/api/v1/computers/oa-2/network-policy'],
    ['PUT', '/api/v1/computers/oa-2/network-policy?wait=0', { mode: 'allowlist' }],
    ['DELETE', '/api/v1/computers/oa-2/network-policy?wait=0'],
    ['POST', '/api/v1/keys', { tenant: 'oa' }],
    ['GET', '/api/v1/keys'],
    ['DELETE', '/api/v1/keys/0000000000000000'],
    ['DELETE', '/api/v1/computers/oa-2'],
    ['GET', '/api/v1/computers/oa-2'],
  ];
  for (const [method, path, body] of calls) {
    const r = await h.call(method, path, body === undefined ? {} : { body });
    t.true(r.status < 500, `${method} ${path}`);
  }
  t.pass();
});

test('the reply check itself catches replies that do not conform', async (t) => {
  const { checkReply } = await import('./openapi-check.js');
  const d = await doc();
  const ok = {
    data: {
      id: 'a',
      cgroup: 'x',
      node: 'n',
      tenant: null,
      dns_upstream: null,
      created_at: 't',
      updated_at: 't',
    },
  };
  t.deepEqual(checkReply(d, 'GET', '/api/v1/computers/a', 200, 'application/json', ok), []);
  const extra = { data: { ...ok.data, secret: 1 } };
  t.notDeepEqual(checkReply(d, 'GET', '/api/v1/computers/a', 200, 'application/json', extra), []);
  const missing = { data: { id: 'a' } };
  t.notDeepEqual(checkReply(d, 'GET', '/api/v1/computers/a', 200, 'application/json', missing), []);
  t.notDeepEqual(checkReply(d, 'GET', '/api/v1/computers/a', 200, 'text/html', ok), []);
  t.notDeepEqual(checkReply(d, 'GET', '/healthz', 500, 'application/json', {}), [], 'undocumented status');
  t.notDeepEqual(
    checkReply(d, 'GET', '/api/v1/computers/a', 404, 'application/json', { error: { code: 'x' } }),
    [],
    'error without message',
  );
});
