/**
 * parsePolicy on rules, without Redis or Koa: what is kept, what is
 * normalised away, what is refused and how (test/api/policy.test.ts has the
 * same through the API).
 */
import test from 'ava';
import { PolicyError } from '../../policy/errors.js';
import { parsePolicy } from '../../policy/schema.js';

const allow = (...rules: unknown[]) => parsePolicy({ mode: 'allowlist', rules }, 10_000);

const refused = (rules: unknown[]) => {
  try {
    allow(...rules);
  } catch (err) {
    if (err instanceof PolicyError) return err;
    throw err;
  }
  throw new Error(`accepted: ${JSON.stringify(rules)}`);
};

test('bind_name false is kept on hostname and wildcard rules, last, after protocol', (t) => {
  const p = allow(
    { bind_name: false, host: 'CDN.example.', port: 443, protocol: 'tcp' },
    { host: '*.assets.example', bind_name: false },
  );
  t.deepEqual(p.rules, [
    { host: 'cdn.example', port: 443, protocol: 'tcp', bind_name: false },
    { host: '*.assets.example', protocol: 'any', bind_name: false },
  ]);
  t.is(
    JSON.stringify(p.rules),
    '[{"host":"cdn.example","port":443,"protocol":"tcp","bind_name":false},' +
      '{"host":"*.assets.example","protocol":"any","bind_name":false}]',
  );
});

test('bind_name true (the default) and absent normalise to the same rule, without bind_name', (t) => {
  const bound = allow({ host: 'pypi.org', port: 443, bind_name: true });
  const plain = allow({ host: 'pypi.org', port: 443 });
  t.is(JSON.stringify(bound.rules), '[{"host":"pypi.org","port":443,"protocol":"any"}]');
  t.is(JSON.stringify(plain.rules), JSON.stringify(bound.rules));
  t.false('bind_name' in bound.rules[0]!);
});

test('a stored policy read back parses to the same JSON (replies can be sent back as they are)', (t) => {
  const first = allow(
    { host: 'a.example', port: 443, protocol: 'tcp', bind_name: false },
    { host: 'b.example' },
    { host: '192.0.2.0/24', port: 53, protocol: 'udp' },
  );
  const again = allow(...JSON.parse(JSON.stringify(first.rules)));
  t.is(JSON.stringify(again.rules), JSON.stringify(first.rules));
});

test('bind_name on an address or CIDR rule is refused: name-binding is for hostname rules, remove it', (t) => {
  for (const [host, shown] of [
    ['10.1.2.3/8', '10.0.0.0/8'],
    ['192.0.2.1', '192.0.2.1'],
    ['2001:DB8::1', '2001:db8::1'],
  ] as const) {
    for (const bind_name of [false, true]) {
      const err = refused([{ host: 'ok.example' }, { host, bind_name }]);
      const message = `name-binding applies only to hostname and wildcard rules, and "${shown}" is an address or CIDR block (allowed by its address alone): remove bind_name from this rule`;
      t.is(err.code, 'invalid_request');
      t.is(err.message, `rules[1].bind_name: ${message}`);
      t.deepEqual(err.details, [{ path: 'rules[1].bind_name', message }]);
    }
  }
});

test('bind_name that is not a boolean is refused, naming the field', (t) => {
  for (const bind_name of ['false', 0, 1, null, {}, []]) {
    const err = refused([{ host: 'a.example', bind_name }]);
    t.is(err.code, 'invalid_request', JSON.stringify(bind_name));
    t.is(err.message, 'rules[0].bind_name: must be true or false');
    t.deepEqual(err.details, [{ path: 'rules[0].bind_name', message: 'must be true or false' }]);
  }
});

test('a bad host with bind_name is one issue, the host', (t) => {
  const err = refused([{ host: '10.0.0.0/33', bind_name: false }]);
  t.deepEqual(
    err.details?.map((d) => d.path),
    ['rules[0].host'],
  );
});
