import test from 'ava';
import { MODE, PROTO } from '../../daemon/kernel/abi.js';
import { type CompiledPolicy, compile, nameMatches, nameVerdict } from '../../daemon/kernel/compile.js';
import type { Policy, Rule } from '../../policy/types.js';

function prefix(c: CompiledPolicy, bytes: number[], len: number) {
  return c.prefixes.find((p) => p.prefixLen === len && p.bytes.join('.') === bytes.join('.'));
}

function portsOf(c: CompiledPolicy, portSet: number): string[] {
  return c.ports
    .filter((e) => e.portSet === portSet)
    .map((e) => `${e.port}/${e.proto}`)
    .sort();
}

test('modes without rules compile to no entries', (t) => {
  for (const mode of ['unrestricted', 'isolated'] as const) {
    const c = compile({ mode, rules: [] });
    t.deepEqual(c.prefixes, []);
    t.is(c.mode, MODE[mode]);
  }
});

test('an address rule becomes a full-length prefix; any protocol without a port matches every port', (t) => {
  const c = compile({ mode: 'allowlist', rules: [{ host: '192.0.2.1', protocol: 'any' }] });
  t.is(c.mode, MODE.allowlist);
  t.deepEqual(c.prefixes, [
    { family: 4, bytes: [192, 0, 2, 1], prefixLen: 32, anyPortProtos: PROTO.any, portSet: 0 },
  ]);
  t.deepEqual(c.ports, []);
});

test('a port rule gives a port set per protocol', (t) => {
  const c = compile({ mode: 'allowlist', rules: [{ host: '2001:db8::/32', port: 443, protocol: 'any' }] });
  const p = prefix(c, [0x20, 0x01, 0x0d, 0xb8, ...Array(12).fill(0)], 32);
  t.truthy(p);
  t.is(p?.anyPortProtos, 0);
  t.deepEqual(portsOf(c, p?.portSet ?? -1), ['443/1', '443/2', '443/4']);
});

test('a longer prefix inherits what its covering prefixes allow (longest match decides alone)', (t) => {
  const policy: Policy = {
    mode: 'allowlist',
    rules: [
      { host: '10.0.0.0/8', protocol: 'udp' },
      { host: '10.1.0.0/16', port: 443, protocol: 'tcp' },
      { host: '10.1.2.3', port: 22, protocol: 'tcp' },
      { host: '10.2.0.0/16', port: 53, protocol: 'udp' },
    ],
  };
  const c = compile(policy);
  const eight = prefix(c, [10, 0, 0, 0], 8);
  const sixteen = prefix(c, [10, 1, 0, 0], 16);
  const host = prefix(c, [10, 1, 2, 3], 32);
  const other = prefix(c, [10, 2, 0, 0], 16);
  t.is(eight?.anyPortProtos, PROTO.udp);
  t.is(sixteen?.anyPortProtos, PROTO.udp);
  t.deepEqual(portsOf(c, sixteen?.portSet ?? -1), ['443/1']);
  t.is(host?.anyPortProtos, PROTO.udp);
  t.deepEqual(portsOf(c, host?.portSet ?? -1), ['22/1', '443/1']);
  // udp/53 is already allowed on every port by the /8: no port entry needed.
  t.is(other?.anyPortProtos, PROTO.udp);
  t.is(other?.portSet, 0);
});

test('sibling prefixes do not inherit from each other', (t) => {
  const c = compile({
    mode: 'denylist',
    rules: [
      { host: '192.0.2.0/25', port: 80, protocol: 'tcp' },
      { host: '192.0.2.128/25', protocol: 'any' },
    ],
  });
  const low = prefix(c, [192, 0, 2, 0], 25);
  const high = prefix(c, [192, 0, 2, 128], 25);
  t.is(low?.anyPortProtos, 0);
  t.deepEqual(portsOf(c, low?.portSet ?? -1), ['80/1']);
  t.is(high?.anyPortProtos, PROTO.any);
  t.is(high?.portSet, 0);
});

test('identical port lists share one port set', (t) => {
  const rules = Array.from({ length: 50 }, (_, i) => ({
    host: `198.51.100.${i}`,
    port: 443,
    protocol: 'tcp' as const,
  }));
  const c = compile({ mode: 'allowlist', rules });
  t.is(c.prefixes.length, 50);
  t.is(new Set(c.prefixes.map((p) => p.portSet)).size, 1);
  t.is(c.ports.length, 1);
});

test('hostname and wildcard rules compile to nothing in the tries and are listed', (t) => {
  const c = compile({
    mode: 'allowlist',
    rules: [
      { host: 'github.com', port: 443, protocol: 'tcp' },
      { host: '*.githubusercontent.com', protocol: 'any' },
    ],
  });
  t.deepEqual(c.prefixes, []);
  t.deepEqual(
    c.names.map((n) => [n.pattern, n.anyPortProtos]),
    [
      ['github.com', 0],
      ['*.githubusercontent.com', PROTO.any],
    ],
  );
  t.deepEqual(portsOf(c, c.names[0]?.portSet ?? -1), ['443/1']);
});

test('duplicate rules merge', (t) => {
  const c = compile({
    mode: 'allowlist',
    rules: [
      { host: '203.0.113.0/24', port: 80, protocol: 'tcp' },
      { host: '203.0.113.7/24', port: 80, protocol: 'tcp' },
      { host: '203.0.113.0/24', port: 81, protocol: 'tcp' },
    ],
  });
  t.is(c.prefixes.length, 1);
  t.deepEqual(portsOf(c, c.prefixes[0]?.portSet ?? -1), ['80/1', '81/1']);
});

test('100,000 host rules under one block fold into three port entries', (t) => {
  const rules: Rule[] = Array.from({ length: 100_000 }, (_, i) => ({
    host: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`,
    protocol: 'tcp',
    port: 443,
  }));
  rules.push({ host: '10.0.0.0/8', protocol: 'udp', port: 53 });
  const c = compile({ mode: 'allowlist', rules });
  t.is(c.prefixes.length, 100_001);
  t.is(c.ports.length, 3); // the /8's {53/udp} and the hosts' {53/udp, 443/tcp}
});

test('wildcards match names below, not the apex; matching patterns unite', (t) => {
  const c = compile({
    mode: 'allowlist',
    rules: [
      { host: '*.example.com', port: 443, protocol: 'tcp' },
      { host: 'api.example.com', port: 8443, protocol: 'tcp' },
      { host: 'example.com', protocol: 'udp' },
    ],
  });
  t.true(nameMatches('*.example.com', 'a.example.com'));
  t.true(nameMatches('*.example.com', 'a.b.example.com'));
  t.false(nameMatches('*.example.com', 'example.com'));
  t.false(nameMatches('*.example.com', 'badexample.com'));
  const https = 443 * 8 + PROTO.tcp;
  const wildcard = { pattern: '*.example.com', anyPortProtos: 0, codes: [https] };
  const bound = { bindName: true, udp: false };
  t.deepEqual(nameVerdict(c, ['www.example.com']), {
    anyPortProtos: 0,
    codes: [https],
    ...bound,
    wildcards: [wildcard],
  });
  t.deepEqual(nameVerdict(c, ['api.example.com']), {
    anyPortProtos: 0,
    codes: [https, 8443 * 8 + PROTO.tcp],
    ...bound,
    wildcards: [wildcard],
  });
  t.deepEqual(nameVerdict(c, ['example.com']), {
    anyPortProtos: PROTO.udp,
    codes: [],
    bindName: true,
    udp: true,
    wildcards: [],
  });
  t.is(nameVerdict(c, ['example.org']), undefined);
  // A CNAME chain matches if any name in it does.
  t.deepEqual(nameVerdict(c, ['cdn.other.net', 'www.example.com']), {
    anyPortProtos: 0,
    codes: [https],
    ...bound,
    wildcards: [wildcard],
  });
});

test('name binding: on unless every matching pattern has a rule that says bind_name false; QUIC only with "udp"', (t) => {
  const c = compile({
    mode: 'allowlist',
    rules: [
      { host: 'pinned.example', port: 443, protocol: 'tcp' },
      { host: 'free.example', port: 443, protocol: 'tcp', bind_name: false },
      { host: '*.free.example', protocol: 'any' },
      { host: 'quic.example', port: 443, protocol: 'udp' },
    ],
  });
  t.like(nameVerdict(c, ['pinned.example']), { bindName: true, udp: false });
  t.like(nameVerdict(c, ['free.example']), { bindName: false });
  t.like(nameVerdict(c, ['a.free.example']), { bindName: true }, 'the wildcard binds');
  t.like(
    nameVerdict(c, ['pinned.example', 'free.example']),
    { bindName: false },
    'a chain: one unbound pattern',
  );
  t.like(nameVerdict(c, ['quic.example']), { udp: true });
  t.like(nameVerdict(c, ['a.free.example']), { udp: false }, '"any" is not "udp"');
});
