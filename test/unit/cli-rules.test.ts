import test from 'ava';
import { parseCliRule, RuleSyntaxError } from '../../cli/rules.js';

test('host[:port][/proto]', (t) => {
  t.deepEqual(parseCliRule('github.com:443/tcp'), { host: 'github.com', port: 443, protocol: 'tcp' });
  t.deepEqual(parseCliRule('github.com'), { host: 'github.com' });
  t.deepEqual(parseCliRule('10.0.0.0/8'), { host: '10.0.0.0/8' });
  t.deepEqual(parseCliRule('10.0.0.0/8:53/udp'), { host: '10.0.0.0/8', port: 53, protocol: 'udp' });
  t.deepEqual(parseCliRule('2001:db8::/32'), { host: '2001:db8::/32' });
  t.deepEqual(parseCliRule('[2001:db8::1]:443/any'), { host: '2001:db8::1', port: 443, protocol: 'any' });
  t.deepEqual(parseCliRule('*.example.com/udp'), { host: '*.example.com', protocol: 'udp' });
});

test('bad rules say what to write', (t) => {
  for (const bad of [
    'github.com:0',
    'github.com:70000',
    'github.com:https',
    '[2001:db8::1',
    ':443',
    '[2001:db8::1]x',
  ]) {
    t.throws(() => parseCliRule(bad), { instanceOf: RuleSyntaxError }, bad);
  }
});
