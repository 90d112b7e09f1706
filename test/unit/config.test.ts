import test from 'ava';
import { checkProxyAddressesLocal, configEnvironment, resolveEgressdConfig } from '../../cli/config.js';
import { resolveLogFormat } from '../../daemon/log.js';

test('configEnvironment: the variables resolve to the same configuration (how egressd all hands it to its agent)', (t) => {
  const config = resolveEgressdConfig(
    {
      redis: 'unix:///var/lib/egressd/redis/redis.sock',
      'bpffs-dir': '/sys/fs/bpf/other',
      node: 'host-1',
      'internal-cidr': ['10.0.0.0/8', 'fd00::/8'],
      'dns-upstream': ['192.0.2.53', '[2001:db8::53]:5353'],
      'dns-proxy-address': ['192.0.2.1'],
      'log-level': 'debug',
      'metrics-listen': '127.0.0.1:0',
    },
    {},
  );
  const env = configEnvironment(config);
  t.is(env['REDIS_URL'], 'unix:///var/lib/egressd/redis/redis.sock');
  t.is(env['EGRESSD_INTERNAL_CIDRS'], '10.0.0.0/8,fd00::/8');
  t.deepEqual(resolveEgressdConfig({}, env), config);
  // Defaults and empty lists come back as they were.
  const defaults = resolveEgressdConfig({ node: 'host-1' }, {});
  t.deepEqual(resolveEgressdConfig({}, configEnvironment(defaults)), defaults);
});

test('log format: auto is pretty on a terminal, JSON otherwise; anything else is refused', (t) => {
  t.is(resolveEgressdConfig({}, {}).logFormat, 'auto');
  t.is(resolveEgressdConfig({ 'log-format': 'json' }, {}).logFormat, 'json');
  t.is(resolveEgressdConfig({}, { EGRESSD_LOG_FORMAT: 'pretty' }).logFormat, 'pretty');
  t.throws(() => resolveEgressdConfig({ 'log-format': 'xml' }, {}), {
    message: /--log-format \/ EGRESSD_LOG_FORMAT: "xml" must be one of auto, pretty, json/,
  });
  t.is(resolveLogFormat('auto', true), 'pretty');
  t.is(resolveLogFormat('auto', false), 'json');
  t.is(resolveLogFormat('json', true), 'json');
  t.is(resolveLogFormat('pretty', false), 'pretty');
});

test('--dns-proxy-address: an address of this host is taken; any other is refused, naming it and what to do', (t) => {
  const interfaces = {
    lo: [{ address: '127.0.0.1' }, { address: '::1' }],
    'veth-sbx': [{ address: '10.88.0.1' }, { address: 'fd00:88::1' }],
  };
  t.notThrows(() => checkProxyAddressesLocal([], interfaces));
  t.notThrows(() => checkProxyAddressesLocal(['10.88.0.1', 'fd00:88:0::1'], interfaces));
  const v4 = t.throws(() => checkProxyAddressesLocal(['10.88.0.1', '192.0.2.1'], interfaces));
  t.regex(
    v4.message,
    /^--dns-proxy-address \/ EGRESSD_DNS_PROXY_ADDRESSES: 192\.0\.2\.1 is not an address of this host/,
  );
  t.regex(v4.message, /its IPv4 addresses: 127\.0\.0\.1 \(lo\), 10\.88\.0\.1 \(veth-sbx\)/);
  t.regex(v4.message, /host side of their veth .*ip address add 192\.0\.2\.1\/24 dev IFACE/);
  const v6 = t.throws(() => checkProxyAddressesLocal(['fd00:99::1'], interfaces));
  t.regex(
    v6.message,
    /fd00:99::1 is not an address of this host \(its IPv6 addresses: ::1 \(lo\), fd00:88::1 \(veth-sbx\)\)/,
  );
  // This host's own interfaces by default: loopback is one of its addresses, TEST-NET-1 is not.
  t.notThrows(() => checkProxyAddressesLocal(['127.0.0.1']));
  t.throws(() => checkProxyAddressesLocal(['192.0.2.1']), {
    message: /192\.0\.2\.1 is not an address of this host/,
  });
});
