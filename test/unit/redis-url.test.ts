import test from 'ava';
import { ConfigError, resolveEgressdConfig } from '../../cli/config.js';
import { parseRedisUrl, RedisUrlError, redactRedisUrl } from '../../store/redis-url.js';

test('redis://, rediss:// and unix:// as before', (t) => {
  t.deepEqual(parseRedisUrl('redis://127.0.0.1:6380/2'), {
    kind: 'server',
    tls: false,
    host: '127.0.0.1',
    port: 6380,
    db: 2,
  });
  t.deepEqual(parseRedisUrl('rediss://app:s%40cret@redis.example'), {
    kind: 'server',
    tls: true,
    host: 'redis.example',
    port: 6379,
    db: 0,
    username: 'app',
    password: 's@cret',
  });
  t.deepEqual(parseRedisUrl('redis://[::1]:7000'), {
    kind: 'server',
    tls: false,
    host: '::1',
    port: 7000,
    db: 0,
  });
  t.deepEqual(parseRedisUrl('unix:///run/redis/redis.sock'), {
    kind: 'socket',
    path: '/run/redis/redis.sock',
  });
});

test('redis+sentinel://: the Sentinels (26379 by default), the master group, ?db=, credentials', (t) => {
  t.deepEqual(parseRedisUrl('redis+sentinel://10.0.0.1:26379,10.0.0.2,[fd00::3]:26380/egressd'), {
    kind: 'sentinel',
    sentinels: [
      { host: '10.0.0.1', port: 26379 },
      { host: '10.0.0.2', port: 26379 },
      { host: 'fd00::3', port: 26380 },
    ],
    name: 'egressd',
    db: 0,
  });
  t.deepEqual(parseRedisUrl('redis+sentinel://:pa%3Ass@s1,s2/my-master?db=3'), {
    kind: 'sentinel',
    sentinels: [
      { host: 's1', port: 26379 },
      { host: 's2', port: 26379 },
    ],
    name: 'my-master',
    db: 3,
    password: 'pa:ss',
  });
  t.like(parseRedisUrl('redis+sentinel://app:pw@s1/m'), { username: 'app', password: 'pw' });
});

test('bad forms: an error that says what to change', (t) => {
  const bad: [string, RegExp][] = [
    ['http://127.0.0.1:6379', /has the scheme http:, not a Redis one: give redis:\/\/host:port\/db/],
    ['127.0.0.1:6379', /is not a Redis URL: give redis:\/\//],
    ['redis://a:1,b:2/0', /is not a URL: .*Sentinel form: redis\+sentinel:\/\//],
    ['redis://127.0.0.1/x', /"x", not a database number/],
    [
      'redis+sentinel://s1:26379,s2:26379',
      /names no master group: end the Sentinel list with \/<master-name>/,
    ],
    ['redis+sentinel://s1:26379/', /names no master group/],
    ['redis+sentinel://s1/m/2', /give the master group's name alone, and the database as \?db=N/],
    ['redis+sentinel://s1,,s2/m', /has "" where a Sentinel address belongs/],
    ['redis+sentinel://s1:/m', /has "s1:" where a Sentinel address belongs/],
    ['redis+sentinel://s1:99999/m', /s1:99999, whose port must be 1 to 65535/],
    ['redis+sentinel:///m', /has "" where a Sentinel address belongs/],
    ['redis+sentinel://s1/m?db=x', /\?db= "x", not a database number/],
    ['redis+sentinel://s1/m?password=x', /takes only \?db=N after the master name, not \?password=/],
    ['redis+sentinel://u:%zz@s1/m', /bad %-escape in the password: percent-encode it/],
    ['unix://', /names no socket/],
  ];
  for (const [url, message] of bad) {
    const err = t.throws(() => parseRedisUrl(url), { instanceOf: RedisUrlError }, url);
    t.regex(err?.message ?? '', message, url);
  }
});

test('the password never shows: redacted in --redis errors', (t) => {
  t.is(redactRedisUrl('redis+sentinel://app:topsecret@s1,s2/m'), 'redis+sentinel://app:***@s1,s2/m');
  t.is(redactRedisUrl('redis://:topsecret@h:1/0'), 'redis://:***@h:1/0');
  t.is(redactRedisUrl('redis://h:1/0'), 'redis://h:1/0');
  const err = t.throws(
    () => resolveEgressdConfig({}, { REDIS_URL: 'redis+sentinel://app:topsecret@s1,s2' }),
    {
      instanceOf: ConfigError,
    },
  );
  t.is(
    err?.message.split(' (redis+sentinel://[user')[0],
    '--redis / REDIS_URL: REDIS_URL="redis+sentinel://app:***@s1,s2" names no master group: end the Sentinel ' +
      'list with /<master-name>, the name of "sentinel monitor <master-name> ..." in the Sentinels\' configuration',
  );
  t.notRegex(err?.message ?? '', /topsecret/);
  const flag = t.throws(() => resolveEgressdConfig({ redis: 'redis://:topsecret@h:1/zz' }, {}));
  t.regex(flag?.message ?? '', /^--redis \/ REDIS_URL: "redis:\/\/:\*\*\*@h:1\/zz" has the path "zz"/);
  t.is(
    resolveEgressdConfig({ redis: 'redis+sentinel://s1:26379,s2:26379,s3:26379/egressd' }, {}).redisUrl,
    'redis+sentinel://s1:26379,s2:26379,s3:26379/egressd',
  );
});
