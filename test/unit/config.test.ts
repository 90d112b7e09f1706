import test from 'ava';
import {
  ConfigError,
  checkProxyAddressesLocal,
  configEnvironment,
  optionsHelp,
  parseListen,
  resolveEgressdConfig,
} from '../../cli/config.js';
import { OPTIONS } from '../../cli/options.js';
import { resolveLogFormat } from '../../daemon/log.js';

// The API's options (from test/api/config.test.ts, when the API resolved its own).
test('defaults', (t) => {
  const c = resolveEgressdConfig({}, {});
  t.is(c.listen, '127.0.0.1:8080');
  t.is(c.waitTimeoutMs, 5000);
  t.is(c.bodyLimitBytes, 1024 * 1024);
  t.is(c.maxRules, 10_000);
  t.is(c.workers, 1);
  t.is(c.ssePerKey, 20);
  t.is(c.sseMax, 2000);
  t.is(c.adminKey, '');
  t.deepEqual(
    Object.keys(c).sort(),
    Object.keys(OPTIONS)
      .filter((k) => k !== 'adminKey' && k !== 'apiKey')
      .sort(),
  );
});

test('argument, then environment, then default; the admin key is not enumerable', (t) => {
  const env = {
    EGRESSD_ADMIN_KEY: 'from-env',
    EGRESSD_WAIT_TIMEOUT_MS: '250',
    REDIS_URL: 'unix:///run/redis.sock',
    EGRESSD_DEFAULT_NODE: 'host-1',
  };
  const c = resolveEgressdConfig(
    { 'wait-timeout-ms': '10' },
    { ...env, EGRESSD_SSE_PER_KEY: '5', EGRESSD_SSE_MAX: '300' },
  );
  t.is(c.ssePerKey, 5);
  t.is(c.sseMax, 300);
  t.is(c.adminKey, 'from-env');
  t.is(c.waitTimeoutMs, 10);
  t.is(c.redisUrl, 'unix:///run/redis.sock');
  t.is(c.defaultNode, 'host-1');
  t.false(JSON.stringify(c).includes('from-env'));
  t.false(JSON.stringify({ ...c }).includes('from-env'));
});

test('bad values are refused with the variable named', (t) => {
  t.throws(() => resolveEgressdConfig({}, { EGRESSD_MAX_RULES: 'lots' }), {
    instanceOf: ConfigError,
    message: /EGRESSD_MAX_RULES="lots" must be a non-negative integer/,
  });
  t.throws(() => resolveEgressdConfig({ listen: 'nowhere' }, {}), { instanceOf: ConfigError });
  t.throws(() => resolveEgressdConfig({ 'api-workers': '0' }, {}), { instanceOf: ConfigError });
});

test('parseListen', (t) => {
  t.deepEqual(parseListen('127.0.0.1:8080'), { host: '127.0.0.1', port: 8080 });
  t.deepEqual(parseListen('[::1]:9000'), { host: '::1', port: 9000 });
  t.deepEqual(parseListen(':80'), { host: '127.0.0.1', port: 80 });
});

test('every error names the flag and the variable; a value from the environment is shown as it is set there', (t) => {
  const message = (flags: Record<string, string | string[]>, env: Record<string, string> = {}) =>
    t.throws(() => resolveEgressdConfig(flags, env), { instanceOf: ConfigError }).message;
  t.is(message({ 'api-workers': '0' }), '--api-workers / EGRESSD_API_WORKERS: "0" must be at least 1');
  t.is(
    message({}, { EGRESSD_API_WORKERS: 'two' }),
    '--api-workers / EGRESSD_API_WORKERS: EGRESSD_API_WORKERS="two" must be a non-negative integer',
  );
  t.is(
    message({ 'internal-cidr': ['10.0.0.0/8', 'example.com'] }),
    '--internal-cidr / EGRESSD_INTERNAL_CIDRS: "example.com" is not an IPv4/IPv6 address or CIDR block',
  );
  t.is(
    message({}, { EGRESSD_CGROUP_ROOTS: ',' }),
    '--cgroup-root / EGRESSD_CGROUP_ROOTS: give at least one sandbox root, for example egressd',
  );
  t.is(
    message({ 'dns-ttl-min': '60', 'dns-ttl-max': '30' }),
    '--dns-ttl-min / EGRESSD_DNS_TTL_MIN (60) must not exceed --dns-ttl-max / EGRESSD_DNS_TTL_MAX (30)',
  );
  t.regex(
    message({ 'dns-upstream': ['192.0.2.53', 'resolver.example'] }),
    /^--dns-upstream \/ EGRESSD_DNS_UPSTREAM: "resolver\.example" must be an IP address/,
  );
  t.regex(message({ node: 'no spaces' }), /^--node \/ EGRESSD_NODE: "no spaces" must be 1 to 128 letters/);
});

test('EGRESSD_API_LISTEN (the API alone listened there) is refused, saying what to rename it to', (t) => {
  t.throws(() => resolveEgressdConfig({}, { EGRESSD_API_LISTEN: '0.0.0.0:8080' }), {
    instanceOf: ConfigError,
    message: 'EGRESSD_API_LISTEN is no longer read: rename it to EGRESSD_LISTEN',
  });
  t.throws(
    () => resolveEgressdConfig({}, { EGRESSD_API_LISTEN: '0.0.0.0:8080', EGRESSD_LISTEN: '127.0.0.1:8080' }),
    { message: /rename it to EGRESSD_LISTEN \(EGRESSD_LISTEN is set too: keep one\)/ },
  );
});

test('--help lists every option of the table: its flag, its variable and its default', (t) => {
  const help = optionsHelp();
  for (const o of Object.values(OPTIONS)) {
    const flag = 'flag' in o ? `--${o.flag}` : '';
    t.regex(help, new RegExp(`^  ${flag}\\s+${o.env}\\s+\\S`, 'm'), o.env);
  }
  t.regex(help, /^ {2}--api-workers +EGRESSD_API_WORKERS +1$/m);
  t.regex(help, /^ {2}--listen +EGRESSD_LISTEN +127\.0\.0\.1:8080$/m);
  t.regex(help, /^ +EGRESSD_ADMIN_KEY +generated into <state-dir>\/admin\.key$/m);
});

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

test('--redis-min-replicas and --redis-replica-timeout: a count of replicas, and milliseconds WAIT may take', (t) => {
  const c = resolveEgressdConfig({}, {});
  t.is(c.redisMinReplicas, 0, 'no WAIT unless asked for');
  t.is(c.redisReplicaTimeoutMs, 1000);
  const set = resolveEgressdConfig(
    { 'redis-replica-timeout': '250' },
    { EGRESSD_REDIS_MIN_REPLICAS: '2', EGRESSD_REDIS_REPLICA_TIMEOUT: '9' },
  );
  t.is(set.redisMinReplicas, 2);
  t.is(set.redisReplicaTimeoutMs, 250, 'the flag before the variable');
  const message = (flags: Record<string, string>, env: Record<string, string> = {}) =>
    t.throws(() => resolveEgressdConfig(flags, env), { instanceOf: ConfigError }).message;
  t.is(
    message({ 'redis-min-replicas': '-1' }),
    '--redis-min-replicas / EGRESSD_REDIS_MIN_REPLICAS: "-1" must be a non-negative integer',
  );
  t.is(
    message({}, { EGRESSD_REDIS_MIN_REPLICAS: '1.5' }),
    '--redis-min-replicas / EGRESSD_REDIS_MIN_REPLICAS: EGRESSD_REDIS_MIN_REPLICAS="1.5" must be a non-negative integer',
  );
  t.is(
    message({ 'redis-replica-timeout': '0' }),
    '--redis-replica-timeout / EGRESSD_REDIS_REPLICA_TIMEOUT: "0" must be at least 1 millisecond (WAIT with 0 would wait for ever)',
  );
  t.regex(message({ 'redis-replica-timeout': '1s' }), /"1s" must be a non-negative integer/);
  t.regex(message({ 'redis-replica-timeout': '600000' }), /must be at most 60000 milliseconds/);
});
