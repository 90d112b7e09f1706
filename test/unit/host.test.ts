import test from 'ava';
import { HostError, parseHost } from '../../policy/host.js';

const normalised = (h: string) => parseHost(h).normalised;

test('addresses and CIDR blocks are normalised with host bits cleared', (t) => {
  t.is(normalised('192.0.2.7'), '192.0.2.7');
  t.is(normalised('192.0.2.7/24'), '192.0.2.0/24');
  t.is(normalised('10.0.0.0/8'), '10.0.0.0/8');
  t.is(normalised('0.0.0.0/0'), '0.0.0.0/0');
  t.is(normalised('2001:DB8:0:0::1'), '2001:db8::1');
  t.is(normalised('2001:db8::1/32'), '2001:db8::/32');
  t.is(normalised('::ffff:192.0.2.1'), '::ffff:c000:201');
  t.is(normalised('192.0.2.1/32'), '192.0.2.1');
});

test('hostnames are lower-cased, lose a trailing dot, and IDN becomes punycode', (t) => {
  t.is(normalised('GitHub.COM.'), 'github.com');
  t.is(normalised('bücher.example'), 'xn--bcher-kva.example');
  t.is(normalised('*.GitHubUserContent.com'), '*.githubusercontent.com');
});

test('malformed hosts are rejected with a message', (t) => {
  for (const bad of [
    '',
    '1.2.3',
    '0x7f.1',
    '256.1.1.1',
    '192.0.2.0/33',
    '192.0.2.0/',
    '2001:db8::/129',
    'fe80::1%eth0',
    'a..b',
    '-a.example',
    'a_b.example',
    'foo.*.example',
    '*',
    '*.',
    'exa mple.com',
    'x'.repeat(64) + '.com',
    '1.2.3.4.5',
  ]) {
    const err = t.throws(() => parseHost(bad), { instanceOf: HostError }, bad);
    t.true((err?.message.length ?? 0) > 10, bad);
  }
});
