/** Bad input never gets a 500, and never a partial write. */
import { request } from 'node:http';
import test from 'ava';
import { type Harness, register, startHarness } from './harness.js';

let h: Harness;
test.before(async () => {
  h = await startHarness();
});
test.after.always(async () => {
  await h?.close();
});

test('malformed requests get 4xx, never 5xx', async (t) => {
  await register(h, 'rob-1');
  const p = '/api/v1/computers/rob-1/network-policy';
  const cases: Array<
    [string, string, { raw?: string; contentType?: string; headers?: Record<string, string> }]
  > = [
    ['GET', '/api/v1/computers/%E0%A4%A/network-policy', {}],
    ['GET', '/api/v1/computers/%00/network-policy', {}],
    ['GET', `/api/v1/computers/${encodeURIComponent('ü')}/network-policy`, {}],
    ['GET', '/api/v1/computers?limit=1&limit=2', {}],
    ['GET', '/api/v1/computers?node=a&node=b', {}],
    ['PUT', `${p}?wait=1&wait=2`, { raw: '{"mode":"isolated"}', contentType: 'application/json' }],
    ['PUT', `${p}?wait=-1`, { raw: '{"mode":"isolated"}', contentType: 'application/json' }],
    [
      'PUT',
      `${p}?wait=99999999999999999999`,
      { raw: '{"mode":"isolated"}', contentType: 'application/json' },
    ],
    ['PUT', p, { raw: '{"mode":"isolated","__proto__":{"x":1}}', contentType: 'application/json' }],
    [
      'PUT',
      p,
      {
        raw: '{"mode":"allowlist","rules":[{"host":"a.example","port":1e400}]}',
        contentType: 'application/json',
      },
    ],
    ['PUT', p, { raw: `${'['.repeat(5000)}${']'.repeat(5000)}`, contentType: 'application/json' }],
    ['PUT', p, { raw: '"just a string"', contentType: 'application/json' }],
    ['PUT', p, { raw: '{"mode":"allowlist","rules":[null]}', contentType: 'application/json' }],
    [
      'PUT',
      p,
      {
        raw: '{"mode":"allowlist","rules":[{"host":"a.example","protocol":null}]}',
        contentType: 'application/json',
      },
    ],
    ['PUT', p, { raw: '\xff\xfe', contentType: 'application/json' }],
    [
      'PUT',
      p,
      { raw: '{"mode":"isolated"}', contentType: 'application/json', headers: { 'if-match': '"1", "2"' } },
    ],
    ['PUT', '/api/v1/computers/rob-2', { raw: '{"cgroup":"a\\u0000b"}', contentType: 'application/json' }],
    [
      'PUT',
      '/api/v1/computers/rob-2',
      { raw: `{"cgroup":"${'a/'.repeat(3000)}"}`, contentType: 'application/json' },
    ],
    ['POST', '/api/v1/keys', { raw: '{"tenant":"x","name":5}', contentType: 'application/json' }],
    ['PATCH', p, { raw: '{}', contentType: 'application/json' }],
  ];
  for (const [method, path, options] of cases) {
    const r = await h.call(method, path, options);
    t.true(
      r.status >= 400 && r.status < 500,
      `${method} ${path} ${options.raw?.slice(0, 40)}: ${r.status} ${r.text.slice(0, 200)}`,
    );
    t.truthy(r.body?.error?.code, `${method} ${path}: error body`);
  }
  const got = await h.call('GET', p);
  t.is(got.body.data.mode, 'unrestricted', 'nothing was written');
});

test('a body larger than the limit without Content-Length (chunked) is 413', async (t) => {
  await register(h, 'rob-3');
  const url = new URL(`${h.baseUrl}/api/v1/computers/rob-3/network-policy`);
  const status = await new Promise<number>((resolve, reject) => {
    const req = request(
      url,
      {
        method: 'PUT',
        headers: { authorization: 'Bearer test-admin-key-0123456789', 'content-type': 'application/json' },
      },
      (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      },
    );
    req.on('error', reject);
    const chunk = 'x'.repeat(64 * 1024);
    let sent = 0;
    const pump = () => {
      while (sent < 2 * 1024 * 1024) {
        sent += chunk.length;
        if (!req.write(chunk)) {
          req.once('drain', pump);
          return;
        }
      }
      req.end();
    };
    pump();
  }).catch(() => 413); // the server may close the connection while we still send
  t.is(status, 413);
});

test('a bug answers 500 internal without details, and is not a store outage', async (t) => {
  await register(h, 'rob-bug');
  const original = h.store.getPolicy;
  h.store.getPolicy = async () => {
    throw new TypeError('boom: secret internals');
  };
  t.teardown(() => {
    h.store.getPolicy = original;
  });
  const r = await h.call('GET', '/api/v1/computers/rob-bug/network-policy');
  t.is(r.status, 500);
  t.deepEqual(r.body, { error: { code: 'internal', message: 'internal error; the API logged it' } });
});
