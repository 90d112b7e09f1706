import test from 'ava';
import { formatCliRule, parseCliRule, RuleSyntaxError } from '../../cli/rules.js';

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

test(',bind_name=false after the rule; formatCliRule writes it back the same way', (t) => {
  t.deepEqual(parseCliRule('cdn.example:443/tcp,bind_name=false'), {
    host: 'cdn.example',
    port: 443,
    protocol: 'tcp',
    bind_name: false,
  });
  t.deepEqual(parseCliRule('*.cdn.example,bind_name=false'), { host: '*.cdn.example', bind_name: false });
  t.deepEqual(parseCliRule('[2001:db8::1]:443,bind_name=true'), {
    host: '2001:db8::1',
    port: 443,
    bind_name: true,
  });
  for (const text of [
    'cdn.example:443/tcp,bind_name=false',
    '*.cdn.example/any,bind_name=false',
    '[2001:db8::1]:443/tcp',
    '2001:db8::/32/any',
    'github.com:443/udp',
  ]) {
    const r = parseCliRule(text);
    t.is(formatCliRule({ ...r, protocol: r.protocol ?? 'any' }), text);
  }
  t.is(formatCliRule({ host: 'a.example', protocol: 'tcp', bind_name: true }), 'a.example/tcp');
});

test('an unknown option after "," names the one there is', (t) => {
  for (const bad of ['a.example,bind_name', 'a.example,bind_name=no', 'a.example,nobind', 'a.example,']) {
    t.throws(() => parseCliRule(bad), { instanceOf: RuleSyntaxError, message: /bind_name=false/ }, bad);
  }
});
