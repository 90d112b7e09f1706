/**
 * The suggested allowlist (api/suggestion.ts): observations → rules, the
 * wildcard collapse at and above its threshold, the order, the empty case,
 * and that the policy schema takes every result as it is.
 */
import test from 'ava';
import { type SuggestedPolicy, suggestPolicy, WILDCARD_THRESHOLD } from '../../api/suggestion.js';
import { parsePolicy } from '../../policy/schema.js';
import { dnsOf } from '../../policy/types.js';
import type { Observation } from '../../store/store.js';

let clock = 1_700_000_000_000;
function seen(host: string, port = 443, protocol: 'tcp' | 'udp' = 'tcp', count = 1): Observation {
  clock += 1000;
  return { host, port, protocol, count, firstSeen: clock - 500, lastSeen: clock };
}

/** What the API would store: the body through its own validation, and that nothing changed in it. */
function accepted(t: { deepEqual: (a: unknown, b: unknown, m?: string) => void }, policy: SuggestedPolicy) {
  const parsed = parsePolicy(JSON.parse(JSON.stringify(policy)), 10_000);
  t.deepEqual(parsed.rules, policy.rules, 'the schema keeps the rules as they are (already normalised)');
  t.deepEqual(parsed.mode, policy.mode);
  return parsed;
}

const hosts = (policy: SuggestedPolicy) => policy.rules.map((r) => `${r.host}:${r.port}/${r.protocol}`);

test('names become hostname rules, addresses address rules, each with its port and protocol', (t) => {
  const s = suggestPolicy([
    seen('github.com', 443, 'tcp', 5),
    seen('pypi.org', 443, 'tcp'),
    seen('github.com', 22, 'tcp'),
    seen('192.0.2.7', 5432, 'tcp'),
    seen('ntp.example', 123, 'udp'),
  ]);
  t.is(s.policy.mode, 'allowlist');
  t.false('dns' in s.policy, 'dns left to the default');
  t.deepEqual(hosts(s.policy), [
    'github.com:22/tcp',
    'github.com:443/tcp',
    'ntp.example:123/udp',
    'pypi.org:443/tcp',
    '192.0.2.7:5432/tcp',
  ]);
  t.is(s.rules.length, s.policy.rules.length);
  t.deepEqual(
    s.rules.map((r) => r.rule),
    s.policy.rules,
  );
  t.is(s.rules[1]?.observations[0]?.count, 5);
  t.is(s.note, null);
  t.deepEqual(s.skipped, []);
  const parsed = accepted(t, s.policy);
  t.is(dnsOf(parsed), 'listed', 'hostname rules: the API default resolves the listed names');
});

test('the same host on another protocol or port is another rule; one rule per (host, port, protocol)', (t) => {
  const s = suggestPolicy([
    seen('dns.example', 53, 'udp'),
    seen('dns.example', 53, 'tcp'),
    seen('DNS.example.', 53, 'udp'),
    seen('10.0.0.1', 53, 'udp'),
    seen('10.0.0.1', 53, 'udp'),
  ]);
  t.deepEqual(hosts(s.policy), ['dns.example:53/tcp', 'dns.example:53/udp', '10.0.0.1:53/udp']);
  t.is(s.rules[1]?.observations.length, 2, 'DNS.example. is dns.example');
  t.is(s.rules[2]?.observations.length, 2);
  accepted(t, s.policy);
});

test('addresses: IPv4 and IPv6 normalised as the schema does, IPv4 first, by value; address-only → dns none', (t) => {
  const s = suggestPolicy([
    seen('2001:DB8:0:0::1', 443),
    seen('10.0.0.10', 443),
    seen('9.9.9.9', 443),
    seen('::ffff:192.0.2.1', 80),
    seen('fe80::1', 443),
    seen('2001:db8::1', 443, 'udp'),
  ]);
  t.deepEqual(hosts(s.policy), [
    '9.9.9.9:443/tcp',
    '10.0.0.10:443/tcp',
    '::ffff:c000:201:80/tcp',
    '2001:db8::1:443/tcp',
    '2001:db8::1:443/udp',
    'fe80::1:443/tcp',
  ]);
  const parsed = accepted(t, s.policy);
  t.is(dnsOf(parsed), 'none');
});

test(`wildcards: more than ${WILDCARD_THRESHOLD} names below one parent on one port and protocol collapse`, (t) => {
  t.is(WILDCARD_THRESHOLD, 3);
  const names = ['a', 'b', 'c', 'd'].map((l) => `${l}.cdn.example.com`);
  const s = suggestPolicy([
    ...names.map((n) => seen(n)),
    seen('x.y.cdn.example.com'), // deeper, on the same port: below *.cdn.example.com too
    seen('cdn.example.com'), // the parent itself: *.cdn.example.com does not match it
    seen('a.cdn.example.com', 80), // another port: one name there, no wildcard
  ]);
  t.deepEqual(hosts(s.policy), [
    '*.cdn.example.com:443/tcp',
    'a.cdn.example.com:80/tcp',
    'cdn.example.com:443/tcp',
  ]);
  t.deepEqual(s.rules[0]?.observations.map((o) => o.host).sort(), [...names, 'x.y.cdn.example.com'].sort());
  accepted(t, s.policy);
});

test('wildcards: at the threshold (exactly 3 names) nothing collapses; repeats of a name count once', (t) => {
  const s = suggestPolicy([
    seen('a.example.com'),
    seen('b.example.com'),
    seen('c.example.com'),
    seen('c.example.com'),
    seen('C.Example.com'),
  ]);
  t.deepEqual(hosts(s.policy), ['a.example.com:443/tcp', 'b.example.com:443/tcp', 'c.example.com:443/tcp']);
  // Four names, split across two protocols: three each at most, no wildcard.
  const split = suggestPolicy([
    seen('a.example.com', 443, 'tcp'),
    seen('b.example.com', 443, 'tcp'),
    seen('c.example.com', 443, 'udp'),
    seen('d.example.com', 443, 'udp'),
  ]);
  t.false(split.policy.rules.some((r) => r.host.startsWith('*.')));
  accepted(t, s.policy);
});

test('wildcards: never *.tld (the parent needs two labels); nested parents take the widest', (t) => {
  const tld = suggestPolicy(['a.com', 'b.com', 'c.com', 'd.com', 'e.com'].map((n) => seen(n)));
  t.deepEqual(hosts(tld.policy), [
    'a.com:443/tcp',
    'b.com:443/tcp',
    'c.com:443/tcp',
    'd.com:443/tcp',
    'e.com:443/tcp',
  ]);
  const nested = suggestPolicy([
    ...['a', 'b', 'c', 'd'].map((l) => seen(`${l}.example.org`)),
    ...['a', 'b', 'c', 'd'].map((l) => seen(`${l}.b.example.org`)),
  ]);
  t.deepEqual(hosts(nested.policy), ['*.example.org:443/tcp']);
  t.is(nested.rules[0]?.observations.length, 8);
  accepted(t, nested.policy);
});

test('wildcards and IPv6 together pass the schema as they are', (t) => {
  const s = suggestPolicy([
    ...['w1', 'w2', 'w3', 'w4', 'w5'].map((l) => seen(`${l}.pkg.dev.example`, 443)),
    seen('2606:4700::6810:84e5', 443),
    seen('2606:4700:0:0:0:0:6810:84e5', 443),
    seen('198.51.100.3', 8443),
    seen('bücher.example', 443),
  ]);
  t.deepEqual(hosts(s.policy), [
    '*.pkg.dev.example:443/tcp',
    'xn--bcher-kva.example:443/tcp',
    '198.51.100.3:8443/tcp',
    '2606:4700::6810:84e5:443/tcp',
  ]);
  t.is(s.rules[3]?.observations.length, 2);
  const parsed = accepted(t, s.policy);
  t.is(dnsOf(parsed), 'listed');
});

test('nothing observed: isolated with dns none (an allowlist needs a rule), and a note says so', (t) => {
  const s = suggestPolicy([]);
  t.deepEqual(s.policy, { mode: 'isolated', rules: [], dns: 'none' });
  t.deepEqual(s.rules, []);
  t.regex(s.note ?? '', /^nothing was observed: the suggestion refuses everything/);
  const parsed = parsePolicy(s.policy, 10_000);
  t.is(parsed.dns, 'none');
  // What the brief imagined is not a valid body: the API answers rules_required.
  t.throws(() => parsePolicy({ mode: 'allowlist', rules: [] }, 10_000), { message: /rules required/ });
});

test('observations no rule can hold are left out, named in the note; order and result stay valid', (t) => {
  const s = suggestPolicy([
    seen('_sip._tcp.example.com', 5060, 'udp'),
    seen('fe80::1%eth0', 443),
    seen('ok.example', 443),
    seen('ok.example', 0),
  ]);
  t.deepEqual(hosts(s.policy), ['ok.example:443/tcp']);
  t.is(s.skipped.length, 3);
  t.regex(
    s.note ?? '',
    /^3 observations are left out, being no valid rule \(_sip\._tcp\.example\.com:5060\/udp, /,
  );
  accepted(t, s.policy);
  const none = suggestPolicy([seen('bad_name.example')]);
  t.is(none.policy.mode, 'isolated');
  t.regex(none.note ?? '', /^no observation can be a rule/);
});

test('more rules than the service takes: said in the note', (t) => {
  const s = suggestPolicy([seen('a.example'), seen('b.example'), seen('c.example')], { maxRules: 2 });
  t.regex(s.note ?? '', /3 rules are more than this service takes in one policy \(2\)/);
  t.is(suggestPolicy([seen('a.example')], { maxRules: 2 }).note, null);
});

test('stable: the order of the observations does not matter', (t) => {
  const list = [
    seen('z.example', 443),
    seen('10.0.0.2', 80),
    seen('a.example', 443),
    seen('10.0.0.1', 80),
    seen('::1', 80),
    seen('a.example', 80, 'udp'),
    ...['a', 'b', 'c', 'd'].map((l) => seen(`${l}.svc.example`, 9000, 'udp')),
  ];
  const forward = suggestPolicy(list);
  const backward = suggestPolicy([...list].reverse());
  t.deepEqual(forward.policy, backward.policy);
  t.deepEqual(hosts(forward.policy), [
    '*.svc.example:9000/udp',
    'a.example:80/udp',
    'a.example:443/tcp',
    'z.example:443/tcp',
    '10.0.0.1:80/tcp',
    '10.0.0.2:80/tcp',
    '::1:80/tcp',
  ]);
  // Observations behind a rule: most recently seen first.
  const wild = forward.rules[0]?.observations ?? [];
  t.deepEqual(
    wild.map((o) => o.lastSeen),
    [...wild.map((o) => o.lastSeen)].sort((a, b) => b - a),
  );
  accepted(t, forward.policy);
});
