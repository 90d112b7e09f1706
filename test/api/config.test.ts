import test from 'ava';
import { ConfigError, DEFAULT_API_CONFIG, parseListen, resolveConfig } from '../../api/config.js';

test('defaults', (t) => {
  const c = resolveConfig({}, {});
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
    Object.keys(DEFAULT_API_CONFIG)
      .filter((k) => k !== 'adminKey')
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
  const c = resolveConfig(
    { waitTimeoutMs: 10 },
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
  t.throws(() => resolveConfig({}, { EGRESSD_MAX_RULES: 'lots' }), {
    instanceOf: ConfigError,
    message: /EGRESSD_MAX_RULES="lots" must be a non-negative integer/,
  });
  t.throws(() => resolveConfig({ listen: 'nowhere' }, {}), { instanceOf: ConfigError });
  t.throws(() => resolveConfig({ workers: 0 }, {}), { instanceOf: ConfigError });
});

test('parseListen', (t) => {
  t.deepEqual(parseListen('127.0.0.1:8080'), { host: '127.0.0.1', port: 8080 });
  t.deepEqual(parseListen('[::1]:9000'), { host: '::1', port: 9000 });
  t.deepEqual(parseListen(':80'), { host: '127.0.0.1', port: 80 });
});
