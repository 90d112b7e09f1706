import test from 'ava';
import type { DnsMode } from '../../policy/types.js';
import { keys } from '../../store/keys.js';
import { ADMIN_KEY, type Harness, register, startHarness } from './harness.js';

let h: Harness;
test.before(async () => {
  h = await startHarness();
});
test.after.always(async () => {
  await h?.close();
});

const path = (id: string) => `/api/v1/computers/${id}/network-policy`;

test('GET of a computer without a policy answers unrestricted with no rules', async (t) => {
  await register(h, 'fresh-1');
  const r = await h.call('GET', path('fresh-1'));
  t.is(r.status, 200);
  t.is(r.body.data.computer_id, 'fresh-1');
  t.is(r.body.data.mode, 'unrestricted');
  t.deepEqual(r.body.data.rules, []);
  t.true(r.body.data.version > 0);
  t.regex(r.body.data.updated_at, /^\d{4}-\d\d-\d\dT/);
  t.is(r.body.data.enforcement.state, 'pending');
  t.is(r.body.data.enforcement.enforced_version, null);
  t.is(r.headers.get('etag'), `"${r.body.data.version}"`);
});

test('GET of an unknown computer is 404 computer not found', async (t) => {
  const r = await h.call('GET', path('nobody'));
  t.is(r.status, 404);
  t.deepEqual(r.body, { error: { code: 'computer_not_found', message: 'computer not found' } });
});

test('PUT replaces the whole policy and echoes normalised rules', async (t) => {
  await register(h, 'put-1');
  const first = await h.call('PUT', `${path('put-1')}?wait=0`, {
    body: {
      mode: 'allowlist',
      rules: [
        { host: 'GitHub.com.', port: 443, protocol: 'tcp' },
        { host: '10.1.2.3/8' },
        { host: '2001:DB8:0:0::1' },
        { host: '*.Bücher.example' },
      ],
    },
  });
  t.is(first.status, 202);
  t.is(first.body.data.mode, 'allowlist');
  t.deepEqual(first.body.data.rules, [
    { host: 'github.com', port: 443, protocol: 'tcp' },
    { host: '10.0.0.0/8', protocol: 'any' },
    { host: '2001:db8::1', protocol: 'any' },
    { host: '*.xn--bcher-kva.example', protocol: 'any' },
  ]);
  t.is(first.body.data.enforcement.state, 'pending');
  const second = await h.call('PUT', `${path('put-1')}?wait=0`, {
    body: { mode: 'denylist', rules: [{ host: '185.220.0.0/16' }] },
  });
  t.true(second.body.data.version > first.body.data.version);
  const got = await h.call('GET', path('put-1'));
  t.deepEqual(got.body.data.rules, [{ host: '185.220.0.0/16', protocol: 'any' }]);
  t.is(got.body.data.mode, 'denylist');
  t.is(got.body.data.version, second.body.data.version);
});

test('PUT isolated without rules; rules with isolated or unrestricted are refused', async (t) => {
  await register(h, 'iso-1');
  const ok = await h.call('PUT', `${path('iso-1')}?wait=0`, { body: { mode: 'isolated' } });
  t.is(ok.status, 202);
  t.deepEqual(ok.body.data.rules, []);
  const empty = await h.call('PUT', `${path('iso-1')}?wait=0`, { body: { mode: 'unrestricted', rules: [] } });
  t.is(empty.status, 202);
  for (const mode of ['isolated', 'unrestricted']) {
    const bad = await h.call('PUT', `${path('iso-1')}?wait=0`, {
      body: { mode, rules: [{ host: 'a.example' }] },
    });
    t.is(bad.status, 400);
    t.is(bad.body.error.code, 'rules_not_allowed');
    t.regex(bad.body.error.message, new RegExp(`^rules: ${mode} mode takes no rules`));
  }
});

test('dns: the defaults by mode and rules, shown in every reply (block_dns mirrors none)', async (t) => {
  await register(h, 'dns-1');
  const put = (body: object) => h.call('PUT', `${path('dns-1')}?wait=0`, { body });
  const cases: [object, DnsMode][] = [
    [{ mode: 'allowlist', rules: [{ host: 'pypi.org', port: 443 }, { host: '10.0.0.0/8' }] }, 'listed'],
    [{ mode: 'allowlist', rules: [{ host: '*.example.com' }] }, 'listed'],
    [{ mode: 'allowlist', rules: [{ host: '10.0.0.0/8' }, { host: '2001:db8::1' }] }, 'none'],
    [{ mode: 'denylist', rules: [{ host: 'evil.example' }] }, 'all'],
    [{ mode: 'isolated' }, 'all'],
    [{ mode: 'unrestricted' }, 'all'],
  ];
  for (const [body, dns] of cases) {
    const r = await put(body);
    t.is(r.status, 202, r.text);
    t.is(r.body.data.dns, dns, JSON.stringify(body));
    t.is(r.body.data.block_dns, dns === 'none');
    const got = await h.call('GET', path('dns-1'));
    t.like(got.body.data, { dns, block_dns: dns === 'none', version: r.body.data.version });
    const snapshot = await h.store.listComputersOfNode('node-a');
    t.is(snapshot.computers.find((c) => c.id === 'dns-1')?.policy.dns, dns, 'the agent reads it too');
  }
  const reset = await h.call('DELETE', `${path('dns-1')}?wait=0`);
  t.like(reset.body.data, { mode: 'unrestricted', dns: 'all', block_dns: false });
});

test('dns: the values that fit are stored as given; a change of dns alone is a new version', async (t) => {
  await register(h, 'dns-2');
  const put = (body: object) => h.call('PUT', `${path('dns-2')}?wait=0`, { body });
  const named = [{ host: 'pypi.org', port: 443, protocol: 'tcp' }];
  for (const body of [
    { mode: 'allowlist', rules: named, dns: 'listed' },
    { mode: 'allowlist', rules: named, dns: 'all' },
    { mode: 'allowlist', rules: [{ host: '192.0.2.0/24' }], dns: 'none' },
    { mode: 'allowlist', rules: [{ host: '192.0.2.0/24' }], dns: 'all' },
    { mode: 'denylist', rules: named, dns: 'all' },
    { mode: 'denylist', rules: named, dns: 'none' },
    { mode: 'isolated', dns: 'all' },
    { mode: 'isolated', dns: 'none' },
    { mode: 'unrestricted', dns: 'all' },
  ]) {
    const r = await put(body);
    t.is(r.status, 202, `${JSON.stringify(body)}: ${r.text}`);
    t.is(r.body.data.dns, body.dns);
  }
  const listed = await put({ mode: 'allowlist', rules: named });
  const all = await put({ mode: 'allowlist', rules: named, dns: 'all' });
  t.true(all.body.data.version > listed.body.data.version, 'dns alone changed: a new version');
  const again = await put({ mode: 'allowlist', rules: named, dns: 'all' });
  t.is(again.body.data.version, all.body.data.version, 'the same policy again: unchanged');
  t.is(
    (await put({ mode: 'allowlist', rules: named, dns: 'listed' })).body.data.version > all.body.data.version,
    true,
  );
  t.is(
    (await put({ mode: 'allowlist', rules: named })).body.data.version,
    (await h.call('GET', path('dns-2'))).body.data.version,
    'leaving dns out is its default (listed here): unchanged',
  );
});

test('dns: every reply can be sent back as it is, and changes nothing', async (t) => {
  await register(h, 'dns-3');
  for (const body of [
    { mode: 'allowlist', rules: [{ host: 'pypi.org' }] },
    { mode: 'allowlist', rules: [{ host: '192.0.2.1' }] },
    { mode: 'denylist', rules: [{ host: 'evil.example' }], dns: 'none' },
    { mode: 'isolated', dns: 'none' },
    { mode: 'unrestricted' },
  ]) {
    const first = await h.call('PUT', `${path('dns-3')}?wait=0`, { body });
    const { mode, rules, dns, block_dns } = first.body.data;
    const back = await h.call('PUT', `${path('dns-3')}?wait=0`, { body: { mode, rules, dns, block_dns } });
    t.is(back.status, 202, back.text);
    t.is(back.body.data.version, first.body.data.version, JSON.stringify(body));
  }
});

test('dns: a value that does not fit the mode or the rules is 400 dns_not_allowed, saying what to change', async (t) => {
  await register(h, 'dns-4');
  const named = [{ host: 'pypi.org', port: 443 }];
  const cidrs = [{ host: '192.0.2.0/24' }];
  const cases: [object, RegExp][] = [
    [
      { mode: 'unrestricted', dns: 'listed' },
      /^dns: unrestricted mode does not send DNS through the proxy.*leave dns out/,
    ],
    [{ mode: 'unrestricted', dns: 'none' }, /^dns: unrestricted mode does not send DNS through the proxy/],
    [
      { mode: 'isolated', dns: 'listed' },
      /^dns: "listed" resolves the names that an allowlist's hostname rules cover, and isolated mode has no rules: use "all" \(the default\) or "none"/,
    ],
    [
      { mode: 'denylist', rules: named, dns: 'listed' },
      /^dns: "listed" .*, and a denylist's rules name what to refuse: use "all" \(the default\) or "none"/,
    ],
    [
      { mode: 'allowlist', rules: cidrs, dns: 'listed' },
      /^dns: "listed" resolves only names that hostname rules cover, and every rule here is an address or CIDR block.*add a hostname rule.*"none".*"all"/,
    ],
    [
      { mode: 'allowlist', rules: [...cidrs, ...named], dns: 'none' },
      /^dns: "none" resolves nothing, so the hostname rules \(rules\[1\]\.host "pypi\.org"\) would never match: use "listed"/,
    ],
    [
      { mode: 'unrestricted', block_dns: true },
      /^block_dns: true is "dns": "none", which does not fit: dns: unrestricted mode/,
    ],
    [
      { mode: 'allowlist', rules: named, block_dns: true },
      /^block_dns: true is "dns": "none", which does not fit: dns: "none" resolves nothing/,
    ],
    [{ mode: 'isolated', block_dns: true, dns: 'all' }, /^block_dns: true contradicts "dns": "all"/],
    [{ mode: 'isolated', block_dns: false, dns: 'none' }, /^block_dns: false contradicts "dns": "none"/],
  ];
  for (const [body, message] of cases) {
    const r = await h.call('PUT', `${path('dns-4')}?wait=0`, { body });
    t.is(r.status, 400, JSON.stringify(body));
    t.is(r.body.error.code, 'dns_not_allowed', JSON.stringify(body));
    t.regex(r.body.error.message, message);
  }
  const wrong = await h.call('PUT', `${path('dns-4')}?wait=0`, { body: { mode: 'isolated', dns: 'some' } });
  t.is(wrong.status, 400);
  t.is(wrong.body.error.code, 'invalid_request');
  t.regex(wrong.body.error.message, /^dns: must be one of listed, all, none/);
  const wrongBlock = await h.call('PUT', `${path('dns-4')}?wait=0`, {
    body: { mode: 'isolated', block_dns: 'yes' },
  });
  t.regex(wrongBlock.body.error.message, /block_dns: must be true or false/);
});

test('block_dns: true (from before dns) is dns none, in every mode where none fits', async (t) => {
  await register(h, 'bdns-1');
  const on = await h.call('PUT', `${path('bdns-1')}?wait=0`, { body: { mode: 'isolated', block_dns: true } });
  t.is(on.status, 202);
  t.like(on.body.data, { mode: 'isolated', dns: 'none', block_dns: true });
  const same = await h.call('PUT', `${path('bdns-1')}?wait=0`, { body: { mode: 'isolated', dns: 'none' } });
  t.is(same.body.data.version, on.body.data.version, 'the same policy');
  const off = await h.call('PUT', `${path('bdns-1')}?wait=0`, { body: { mode: 'isolated' } });
  t.like(off.body.data, { dns: 'all', block_dns: false });
  t.true(off.body.data.version > on.body.data.version, 'switching it is a change');
  const deny = await h.call('PUT', `${path('bdns-1')}?wait=0`, {
    body: { mode: 'denylist', rules: [{ host: '192.0.2.1' }], block_dns: true },
  });
  t.like(deny.body.data, { mode: 'denylist', dns: 'none', block_dns: true });
});

test('policies stored before dns existed read as the defaults; "isolated+block_dns" as isolated with dns none', async (t) => {
  const redis = h.store.redis;
  const legacy = async (id: string, mode: string, rules: object[]) => {
    await register(h, id);
    const version = await redis.incr(keys.version());
    // What an older API wrote: no dns field; block_dns folded into the mode.
    await redis.hdel(keys.policy(id), 'dns');
    await redis.hset(keys.policy(id), 'mode', mode, 'rules', JSON.stringify(rules), 'version', version);
    return version;
  };
  const bdns = await legacy('old-bdns', 'isolated+block_dns', []);
  const named = [{ host: 'pypi.org', port: 443, protocol: 'tcp' }];
  await legacy('old-allow', 'allowlist', named);
  await legacy('old-cidr', 'allowlist', [{ host: '192.0.2.0/24', protocol: 'any' }]);
  await legacy('old-iso', 'isolated', []);
  const expected: Record<string, [string, string]> = {
    'old-bdns': ['isolated', 'none'],
    'old-allow': ['allowlist', 'listed'],
    'old-cidr': ['allowlist', 'none'],
    'old-iso': ['isolated', 'all'],
  };
  const snapshot = await h.store.listComputersOfNode('node-a');
  for (const [id, [mode, dns]] of Object.entries(expected)) {
    const got = await h.call('GET', path(id));
    t.is(got.status, 200);
    t.like(got.body.data, { mode, dns, block_dns: dns === 'none' }, id);
    t.like(snapshot.computers.find((c) => c.id === id)?.policy, { mode, dns }, id);
    t.like(await h.store.getPolicy(id), { mode, dns }, id);
  }
  t.is((await h.call('GET', path('old-bdns'))).body.data.version, bdns);
  // The first PUT of the same policy stores it the new way (one new version), the next changes nothing.
  const first = await h.call('PUT', `${path('old-bdns')}?wait=0`, {
    body: { mode: 'isolated', block_dns: true },
  });
  t.true(first.body.data.version > bdns);
  t.deepEqual(await redis.hmget(keys.policy('old-bdns'), 'mode', 'dns'), ['isolated', 'none']);
  const second = await h.call('PUT', `${path('old-bdns')}?wait=0`, {
    body: { mode: 'isolated', dns: 'none' },
  });
  t.is(second.body.data.version, first.body.data.version);
});

test('audit: false unless sent; echoed by every reply, the list, and what the agent reads; DELETE resets it', async (t) => {
  await register(h, 'audit-1');
  const agentSees = async (id: string) => ({
    snapshot: (await h.store.listComputersOfNode('node-a')).computers.find((c) => c.id === id)?.policy.audit,
    refresh: (await h.store.getPolicy(id))?.audit,
  });
  const listed = async (id: string) =>
    (await h.call('GET', '/api/v1/computers?node=node-a&limit=1000')).body.data.find(
      (c: { id: string }) => c.id === id,
    ).policy.audit;
  t.is((await h.call('GET', path('audit-1'))).body.data.audit, false, 'a new computer');
  const plain = await h.call('PUT', `${path('audit-1')}?wait=0`, { body: { mode: 'isolated' } });
  t.is(plain.body.data.audit, false, 'absent: false');
  t.deepEqual(await agentSees('audit-1'), { snapshot: false, refresh: false });
  const body = { mode: 'denylist', rules: [{ host: '192.0.2.0/24' }], audit: true };
  const on = await h.call('PUT', `${path('audit-1')}?wait=0`, { body });
  t.is(on.status, 202);
  t.like(on.body.data, { mode: 'denylist', audit: true });
  t.like((await h.call('GET', path('audit-1'))).body.data, { audit: true, version: on.body.data.version });
  t.deepEqual(await agentSees('audit-1'), { snapshot: true, refresh: true });
  t.is(await listed('audit-1'), true);
  t.is(await h.store.redis.hget(keys.policy('audit-1'), 'audit'), '1');
  const reset = await h.call('DELETE', `${path('audit-1')}?wait=0`);
  t.like(reset.body.data, { mode: 'unrestricted', audit: false });
  t.true(reset.body.data.version > on.body.data.version);
  t.is((await h.call('GET', path('audit-1'))).body.data.audit, false);
  t.deepEqual(await agentSees('audit-1'), { snapshot: false, refresh: false });
  t.is(await listed('audit-1'), false);
});

test('audit: a change of audit alone is a new version; the same body twice is unchanged', async (t) => {
  await register(h, 'audit-2');
  const put = (body: object) => h.call('PUT', `${path('audit-2')}?wait=0`, { body });
  const rules = [{ host: 'pypi.org', port: 443, protocol: 'tcp' }];
  const off = await put({ mode: 'allowlist', rules, audit: false });
  const on = await put({ mode: 'allowlist', rules, audit: true });
  t.true(on.body.data.version > off.body.data.version, 'audit on alone: a new version');
  const again = await put({ mode: 'allowlist', rules, audit: true });
  t.is(again.body.data.version, on.body.data.version, 'the same body: unchanged');
  // Every reply can be sent back as it is, and changes nothing.
  const { mode, dns, block_dns, audit } = again.body.data;
  const back = await put({ mode, rules: again.body.data.rules, dns, block_dns, audit });
  t.is(back.body.data.version, on.body.data.version);
  const left = await put({ mode: 'allowlist', rules });
  t.true(left.body.data.version > on.body.data.version, 'leaving audit out turns it off: a new version');
  t.is(left.body.data.audit, false);
  t.is((await put({ mode: 'allowlist', rules, audit: false })).body.data.version, left.body.data.version);
  // Through the store, as the API calls it: a Policy without audit is audit false.
  const stored = await h.store.putPolicy(
    'audit-2',
    { mode: 'allowlist', rules: [{ host: 'pypi.org', port: 443, protocol: 'tcp' }] },
    {},
  );
  t.like(stored, { status: 'unchanged', record: { audit: false, version: left.body.data.version } });
  const viaStore = await h.store.putPolicy('audit-2', { mode: 'isolated', rules: [], audit: true }, {});
  t.like(viaStore, { status: 'ok', record: { audit: true } });
  t.like(await h.store.getPolicy('audit-2'), { mode: 'isolated', audit: true });
});

test('audit: anything but true or false is 400 invalid_request naming the field', async (t) => {
  await register(h, 'audit-3');
  for (const audit of ['true', 'yes', 1, 0, null, {}, []]) {
    const r = await h.call('PUT', `${path('audit-3')}?wait=0`, { body: { mode: 'isolated', audit } });
    t.is(r.status, 400, JSON.stringify(audit));
    t.is(r.body.error.code, 'invalid_request');
    t.is(r.body.error.message, 'audit: must be true or false');
    t.deepEqual(r.body.error.details, [{ path: 'audit', message: 'must be true or false' }]);
  }
  t.is((await h.call('GET', path('audit-3'))).body.data.mode, 'unrestricted', 'nothing stored');
});

test('a policy stored before audit existed reads audit false, and the same PUT again changes nothing', async (t) => {
  const redis = h.store.redis;
  await register(h, 'old-audit');
  const body = { mode: 'denylist', rules: [{ host: 'evil.example', protocol: 'any' }] };
  const first = await h.call('PUT', `${path('old-audit')}?wait=0`, { body });
  // What an older API wrote: no audit field.
  await redis.hdel(keys.policy('old-audit'), 'audit');
  const got = await h.call('GET', path('old-audit'));
  t.like(got.body.data, { mode: 'denylist', audit: false, version: first.body.data.version });
  const snapshot = await h.store.listComputersOfNode('node-a');
  t.is(snapshot.computers.find((c) => c.id === 'old-audit')?.policy.audit, false);
  t.is((await h.store.getPolicy('old-audit'))?.audit, false);
  t.is((await h.store.policyStatuses(['old-audit'])).get('old-audit')?.audit, false);
  const same = await h.call('PUT', `${path('old-audit')}?wait=0`, { body });
  t.is(same.body.data.version, first.body.data.version, 'absent is false: unchanged');
  const on = await h.call('PUT', `${path('old-audit')}?wait=0`, { body: { ...body, audit: true } });
  t.true(on.body.data.version > first.body.data.version);
  t.is(await redis.hget(keys.policy('old-audit'), 'audit'), '1');
});

test('bind_name: false is stored and answered after protocol; true is the default, left out', async (t) => {
  await register(h, 'bind-1');
  const put = (body: object) => h.call('PUT', `${path('bind-1')}?wait=0`, { body });
  const rules = [
    { host: 'CDN.example', port: 443, protocol: 'tcp', bind_name: false },
    { host: 'pypi.org', port: 443, protocol: 'tcp', bind_name: true },
    { bind_name: false, host: '*.assets.example' },
  ];
  const first = await put({ mode: 'allowlist', rules });
  t.is(first.status, 202, first.text);
  const stored =
    '[{"host":"cdn.example","port":443,"protocol":"tcp","bind_name":false},' +
    '{"host":"pypi.org","port":443,"protocol":"tcp"},' +
    '{"host":"*.assets.example","protocol":"any","bind_name":false}]';
  t.true(first.text.includes(`"rules":${stored}`), first.text);
  const got = await h.call('GET', path('bind-1'));
  t.true(got.text.includes(`"rules":${stored}`), got.text);
  t.is(await h.store.redis.hget(keys.policy('bind-1'), 'rules'), stored);
  const snapshot = await h.store.listComputersOfNode('node-a');
  t.deepEqual(
    snapshot.computers.find((c) => c.id === 'bind-1')?.policy.rules,
    JSON.parse(stored),
    'the agent reads it too',
  );
  // The reply sent back changes nothing; bind_name alone is a change.
  const back = await put({ mode: 'allowlist', rules: got.body.data.rules });
  t.is(back.body.data.version, first.body.data.version);
  const bound = await put({ mode: 'allowlist', rules: rules.map(({ bind_name, ...r }) => r) });
  t.true(bound.body.data.version > first.body.data.version, 'bind_name alone: a new version');
  t.false(bound.text.includes('bind_name'));
});

test('bind_name: a policy without it is stored and answered byte for byte as before', async (t) => {
  await register(h, 'bind-2');
  const body = {
    mode: 'allowlist',
    rules: [{ host: 'pypi.org', port: 443, protocol: 'tcp' }, { host: '192.0.2.0/24' }],
  };
  const first = await h.call('PUT', `${path('bind-2')}?wait=0`, { body });
  const stored = '[{"host":"pypi.org","port":443,"protocol":"tcp"},{"host":"192.0.2.0/24","protocol":"any"}]';
  t.is(await h.store.redis.hget(keys.policy('bind-2'), 'rules'), stored);
  const got = await h.call('GET', path('bind-2'));
  const back = await h.call('PUT', `${path('bind-2')}?wait=0`, {
    body: { mode: got.body.data.mode, rules: got.body.data.rules, dns: got.body.data.dns },
  });
  t.is(back.body.data.version, first.body.data.version, 'unchanged');
  const again = await h.call('GET', path('bind-2'));
  t.is(again.text, got.text, 'byte-identical');
  t.true(got.text.includes(`"rules":${stored}`));
});

test('bind_name: on an address or CIDR rule, or not a boolean, is 400 invalid_request saying what to change', async (t) => {
  await register(h, 'bind-3');
  const put = (rules: object[]) =>
    h.call('PUT', `${path('bind-3')}?wait=0`, { body: { mode: 'allowlist', rules } });
  for (const bind_name of [false, true]) {
    const r = await put([{ host: 'a.example' }, { host: '10.1.2.3/8', port: 443, bind_name }]);
    t.is(r.status, 400);
    t.is(r.body.error.code, 'invalid_request');
    const message =
      'name-binding applies only to hostname and wildcard rules, and "10.0.0.0/8" is an address or CIDR block (allowed by its address alone): remove bind_name from this rule';
    t.is(r.body.error.message, `rules[1].bind_name: ${message}`);
    t.deepEqual(r.body.error.details, [{ path: 'rules[1].bind_name', message }]);
  }
  for (const bind_name of ['false', 0, null]) {
    const r = await put([{ host: 'a.example', bind_name }]);
    t.is(r.status, 400, JSON.stringify(bind_name));
    t.is(r.body.error.message, 'rules[0].bind_name: must be true or false');
  }
  t.is((await h.call('GET', path('bind-3'))).body.data.mode, 'unrestricted', 'nothing stored');
});

test('events: name_mismatch carries the name tried, quic none (as the OpenAPI document says)', async (t) => {
  await register(h, 'events-name');
  const event = (reason: string, port: number, name?: string) => ({
    computer: 'events-name',
    at: new Date().toISOString(),
    pid: 42,
    comm: 'curl',
    family: 'ipv4',
    protocol: reason === 'quic' ? 'udp' : 'tcp',
    address: '192.0.2.9',
    port,
    hostname: 'cdn.example',
    reason,
    audit: false,
    ...(name === undefined ? {} : { name }),
  });
  await h.store.appendEvents('events-name', [
    event('name_mismatch', 443, 'evil.example'),
    event('name_mismatch', 80, ''),
    event('quic', 443),
  ]);
  const r = await h.call('GET', `${path('events-name')}/events`);
  t.is(r.status, 200);
  t.deepEqual(
    r.body.data.map((e: { reason: string; name?: string }) => [e.reason, e.name]),
    [
      ['quic', undefined],
      ['name_mismatch', ''],
      ['name_mismatch', 'evil.example'],
    ],
  );
});

test('learned: what the agent published, unexpired, sorted; 404 for unknown computers', async (t) => {
  await register(h, 'learn-1');
  const soon = Date.now() + 60_000;
  await h.store.putLearned('learn-1', [
    { name: 'b.example', address: '2001:db8::2', expiresAt: soon },
    { name: 'a.example', address: '192.0.2.1', expiresAt: soon },
    { name: 'old.example', address: '192.0.2.9', expiresAt: Date.now() - 1000 },
  ]);
  const got = await h.call('GET', `${path('learn-1')}/learned`);
  t.is(got.status, 200);
  t.deepEqual(
    got.body.data.map((l: { name: string; address: string }) => `${l.name} ${l.address}`),
    ['a.example 192.0.2.1', 'b.example 2001:db8::2'],
  );
  t.is(got.body.data[0].expires_at, new Date(soon).toISOString());
  t.is((await h.call('GET', `${path('nobody-here')}/learned`)).status, 404);
});

test('events: newest first, limit and since; 404 for unknown computers', async (t) => {
  await register(h, 'events-1');
  const event = (port: number) => ({
    computer: 'events-1',
    at: new Date().toISOString(),
    pid: 42,
    comm: 'curl',
    family: 'ipv4',
    protocol: 'tcp',
    address: '192.0.2.9',
    port,
    hostname: null,
    reason: 'mode',
  });
  await h.store.appendEvents('events-1', [event(1), event(2), event(3)]);
  const all = await h.call('GET', `${path('events-1')}/events`);
  t.is(all.status, 200);
  t.deepEqual(
    all.body.data.map((e: { port: number }) => e.port),
    [3, 2, 1],
  );
  const one = await h.call('GET', `${path('events-1')}/events?limit=1`);
  t.deepEqual(
    one.body.data.map((e: { port: number }) => e.port),
    [3],
  );
  const future = await h.call('GET', `${path('events-1')}/events?since=2999-01-01T00:00:00Z`);
  t.deepEqual(future.body.data, []);
  const bad = await h.call('GET', `${path('events-1')}/events?since=yesterday`);
  t.is(bad.status, 400);
  t.regex(bad.body.error.message, /^since: must be an RFC 3339 time/);
  t.is((await h.call('GET', `${path('nobody-here')}/events`)).status, 404);
});

test('events/stream delivers new events live as Server-Sent Events; 404 for unknown computers', async (t) => {
  await register(h, 'events-live');
  const abort = new AbortController();
  // fetch, not api/client.ts: the client reads whole answers, a stream never ends.
  const res = await fetch(`${h.baseUrl}${path('events-live')}/events/stream`, {
    headers: { authorization: `Bearer ${ADMIN_KEY}` },
    signal: abort.signal,
  });
  t.is(res.status, 200);
  t.regex(res.headers.get('content-type') ?? '', /^text\/event-stream/);
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let text = '';
  const readUntil = async (what: RegExp) => {
    const deadline = Date.now() + 5000;
    while (!what.test(text) && Date.now() < deadline) {
      const { value, done } = await reader.read();
      if (done) break;
      text += decoder.decode(value);
    }
  };
  await readUntil(/: connected/);
  await h.store.appendEvents('events-live', [{ computer: 'events-live', port: 7, reason: 'mode' }]);
  await readUntil(/^data: .*\n\n/m);
  abort.abort();
  const line = text.split('\n').find((l) => l.startsWith('data: '));
  t.like(JSON.parse(line?.slice(6) ?? '{}'), { computer: 'events-live', port: 7, reason: 'mode' });
  const missing = await fetch(`${h.baseUrl}${path('nobody-here')}/events/stream`, {
    headers: { authorization: `Bearer ${ADMIN_KEY}` },
  });
  t.is(missing.status, 404);
});

test('events/stream ends when the computer is deleted: the next computer of the id is not its to follow', async (t) => {
  await register(h, 'events-gone');
  const abort = new AbortController();
  t.teardown(() => abort.abort());
  const res = await fetch(`${h.baseUrl}${path('events-gone')}/events/stream`, {
    headers: { authorization: `Bearer ${ADMIN_KEY}` },
    signal: abort.signal,
  });
  t.is(res.status, 200);
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let text = '';
  let ended = false;
  const reading = (async () => {
    // Bounded: the server ends the stream (or the teardown aborts it).
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += decoder.decode(value);
    }
    ended = true;
  })().catch(() => {});
  const deadline = Date.now() + 5000;
  while (!text.includes(': connected') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.is((await h.call('DELETE', '/api/v1/computers/events-gone')).status, 204);
  await register(h, 'events-gone', { tenant: 'someone-else' });
  await h.store.appendEvents('events-gone', [{ computer: 'events-gone', port: 9, reason: 'mode' }]);
  const until = Date.now() + 8000;
  while (!ended && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
  t.true(ended, 'the stream ended');
  t.false(text.includes('data: '), text);
  abort.abort();
  await reading;
});

test('allowlist and denylist without rules: 400 with the seed text', async (t) => {
  await register(h, 'req-1');
  for (const body of [{ mode: 'allowlist' }, { mode: 'denylist', rules: [] }]) {
    const r = await h.call('PUT', path('req-1'), { body });
    t.is(r.status, 400);
    t.deepEqual(r.body, {
      error: { code: 'rules_required', message: 'rules required for allowlist/denylist mode' },
    });
  }
});

test('PUT to an unknown computer is 404 and writes nothing', async (t) => {
  const r = await h.call('PUT', path('ghost'), { body: { mode: 'isolated' } });
  t.is(r.status, 404);
  t.is(r.body.error.message, 'computer not found');
  t.is(await h.store.redis.exists('egressd:computer:ghost:policy'), 0);
});

test('DELETE resets to unrestricted and is idempotent', async (t) => {
  await register(h, 'del-1');
  await h.call('PUT', `${path('del-1')}?wait=0`, { body: { mode: 'isolated' } });
  const first = await h.call('DELETE', `${path('del-1')}?wait=0`);
  t.is(first.status, 202);
  t.is(first.body.data.computer_id, 'del-1');
  t.is(first.body.data.mode, 'unrestricted');
  t.deepEqual(first.body.data.rules, []);
  const again = await h.call('DELETE', `${path('del-1')}?wait=0`);
  t.true(again.status === 200 || again.status === 202);
  t.is(again.body.data.mode, 'unrestricted');
  t.is(again.body.data.version, first.body.data.version, 'an unchanged policy keeps its version');
  const missing = await h.call('DELETE', path('nobody'));
  t.is(missing.status, 404);
});

test('validation errors name the field path', async (t) => {
  await register(h, 'val-1');
  const cases: Array<[unknown, RegExp]> = [
    [
      { mode: 'allowlist', rules: [{ host: 'a.example', port: 0 }] },
      /^rules\[0\]\.port: must be an integer from 1 to 65535/,
    ],
    [
      { mode: 'allowlist', rules: [{ host: 'a.example' }, { host: 'b.example', port: 70000 }] },
      /^rules\[1\]\.port: must be an integer/,
    ],
    [
      { mode: 'allowlist', rules: [{ host: 'a.example', port: 44.5 }] },
      /^rules\[0\]\.port: must be an integer/,
    ],
    [
      { mode: 'allowlist', rules: [{ host: 'a.example', port: '443' }] },
      /^rules\[0\]\.port: must be an integer/,
    ],
    [
      { mode: 'allowlist', rules: [{ host: 'a.example', protocol: 'icmp' }] },
      /^rules\[0\]\.protocol: must be one of tcp, udp, any/,
    ],
    [
      { mode: 'allowlist', rules: [{ host: 'a..example' }] },
      /^rules\[0\]\.host: "a\.\.example" is not a valid hostname/,
    ],
    [{ mode: 'allowlist', rules: [{ host: '10.0.0.0/33' }] }, /^rules\[0\]\.host: .*prefix length/],
    [{ mode: 'allowlist', rules: [{ host: '1.2.3' }] }, /^rules\[0\]\.host: .*not a valid IPv4/],
    [{ mode: 'allowlist', rules: [{ host: 'a.*.example' }] }, /^rules\[0\]\.host: .*wildcard/],
    [{ mode: 'allowlist', rules: [{ host: '' }] }, /^rules\[0\]\.host: must not be empty/],
    [{ mode: 'allowlist', rules: [{ host: 5 }] }, /^rules\[0\]\.host: must be a string/],
    [{ mode: 'allowlist', rules: [{ host: 'a.example', extra: 1 }] }, /^rules\[0\]\.extra: unknown field/],
    [{ mode: 'allowlist', rules: 'github.com' }, /^rules: must be an array/],
    [{ mode: 'blocklist' }, /^mode: must be one of unrestricted, allowlist, denylist, isolated/],
    [{ rules: [] }, /^mode: must be one of/],
    [{ mode: 'isolated', version: 3 }, /^version: unknown field/],
    [[1, 2], /^body: /],
    ['text', /^body: /],
    [null, /^body: /],
  ];
  for (const [body, message] of cases) {
    const r = await h.call('PUT', path('val-1'), { body });
    t.is(r.status, 400, JSON.stringify(body));
    t.is(r.body.error.code, 'invalid_request', JSON.stringify(body));
    t.regex(r.body.error.message, message, JSON.stringify(body));
  }
  const got = await h.call('GET', path('val-1'));
  t.is(got.body.data.mode, 'unrestricted', 'no partial write');
});

test('invalid computer ids are 400', async (t) => {
  for (const id of ['-lead', '.x', 'a'.repeat(201), 'sp%20ace', 'a:b', 'a~~b', '~x', 'x~', 'a~-b']) {
    const r = await h.call('GET', path(id));
    t.is(r.status, 400, id);
    t.regex(r.body.error.message, /^id: must be a name of A-Z/);
  }
  t.is((await h.call('GET', path('a'.repeat(200)))).status, 404);
  t.is((await h.call('GET', path('tenant~a'))).status, 404);
});

test('too many rules: 400 too_many_rules', async (t) => {
  const small = await startHarness({ maxRules: 3 });
  t.teardown(() => small.close());
  await register(small, 'many');
  const rules = Array.from({ length: 4 }, (_, i) => ({ host: `h${i}.example` }));
  const r = await small.call('PUT', path('many'), { body: { mode: 'allowlist', rules } });
  t.is(r.status, 400);
  t.is(r.body.error.code, 'too_many_rules');
  t.regex(r.body.error.message, /^rules: at most 3 rules per policy, got 4/);
  const ok = await small.call('PUT', `${path('many')}?wait=0`, {
    body: { mode: 'allowlist', rules: rules.slice(1) },
  });
  t.is(ok.status, 202);
});

test('body errors: 415 not JSON, 400 bad JSON, 413 over the limit', async (t) => {
  await register(h, 'body-1');
  const text = await h.call('PUT', path('body-1'), { raw: 'mode=isolated', contentType: 'text/plain' });
  t.is(text.status, 415);
  t.is(text.body.error.code, 'unsupported_media_type');
  const none = await h.call('PUT', path('body-1'), { raw: '{"mode":"isolated"}' });
  t.true(none.status === 415, `no content type: ${none.status}`);
  const bad = await h.call('PUT', path('body-1'), { raw: '{"mode":', contentType: 'application/json' });
  t.is(bad.status, 400);
  t.is(bad.body.error.code, 'invalid_json');
  const big = await h.call('PUT', path('body-1'), {
    raw: JSON.stringify({ mode: 'allowlist', rules: [], pad: 'x'.repeat(1024 * 1024) }),
    contentType: 'application/json',
  });
  t.is(big.status, 413);
  t.is(big.body.error.code, 'payload_too_large');
  const empty = await h.call('PUT', path('body-1'), { raw: '', contentType: 'application/json' });
  t.is(empty.status, 400);
});

test('unknown route is 404, wrong method is 405 with Allow', async (t) => {
  const r = await h.call('GET', '/api/v1/nothing');
  t.is(r.status, 404);
  t.is(r.body.error.code, 'not_found');
  const m = await h.call('POST', path('x'), { body: {} });
  t.is(m.status, 405);
  t.is(m.body.error.code, 'method_not_allowed');
  t.regex(m.headers.get('allow') ?? '', /PUT/);
});

test('If-Match gives compare-and-set', async (t) => {
  await register(h, 'cas-1');
  const got = await h.call('GET', path('cas-1'));
  const v = got.body.data.version;
  const ok = await h.call('PUT', `${path('cas-1')}?wait=0`, {
    body: { mode: 'isolated' },
    headers: { 'if-match': `"${v}"` },
  });
  t.is(ok.status, 202);
  const stale = await h.call('PUT', `${path('cas-1')}?wait=0`, {
    body: { mode: 'unrestricted' },
    headers: { 'if-match': `"${v}"` },
  });
  t.is(stale.status, 412);
  t.is(stale.body.error.code, 'precondition_failed');
  const staleDelete = await h.call('DELETE', `${path('cas-1')}?wait=0`, {
    headers: { 'if-match': String(v) },
  });
  t.is(staleDelete.status, 412);
  const bad = await h.call('PUT', path('cas-1'), {
    body: { mode: 'isolated' },
    headers: { 'if-match': 'abc' },
  });
  t.is(bad.status, 400);
  t.is((await h.call('GET', path('cas-1'))).body.data.mode, 'isolated');
});

test('wait parameter is validated', async (t) => {
  await register(h, 'wait-1');
  const r = await h.call('PUT', `${path('wait-1')}?wait=soon`, { body: { mode: 'isolated' } });
  t.is(r.status, 400);
  t.regex(r.body.error.message, /^wait: must be an integer from 0 to 60000/);
});
