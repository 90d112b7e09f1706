/**
 * The forms of egressd's Redis URL (`--redis`, REDIS_URL), parsed once into
 * what store/connection.ts gives ioredis. Pure: no I/O.
 *
 *   redis://[[user]:password@]host[:port][/db]      one server (port 6379, db 0)
 *   rediss://...                                     the same over TLS
 *   unix:///path/to/redis.sock                       a local socket, as it was
 *   redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/<master-name>[?db=N]
 *
 * The Sentinel form lists the Sentinels (port 26379 unless given; IPv6
 * in brackets, `[::1]:26379`) and names the master group they monitor (the
 * name of `sentinel monitor <name> ...`). The clients ask the Sentinels for
 * that group's primary, connect to it, and ask again after losing it. The
 * credentials are the Redis servers' (AUTH to the primary); the Sentinels
 * themselves are asked without AUTH, and over plain TCP. In credentials,
 * percent-encode `@ : / ? #` (for example %40 for @).
 *
 * Error messages say what is wrong with the URL without repeating it (the
 * caller names it, redacted: redactRedisUrl() is the URL as it may be shown,
 * without its password). A bad URL is an error when it is given, not later.
 */

export const DEFAULT_SENTINEL_PORT = 26379;
export const DEFAULT_REDIS_PORT = 6379;

export interface HostPort {
  host: string;
  port: number;
}

interface Credentials {
  username?: string;
  password?: string;
}

/** Where the store's Redis is, and how to reach it. */
export type RedisTarget =
  | { kind: 'socket'; path: string }
  | ({ kind: 'server'; tls: boolean; db: number } & HostPort & Credentials)
  | ({ kind: 'sentinel'; sentinels: HostPort[]; name: string; db: number } & Credentials);

/** A Redis URL that cannot be used; its message says what to change (and holds no password). */
export class RedisUrlError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RedisUrlError';
  }
}

const SENTINEL_FORM =
  'redis+sentinel://[user:password@]host1:26379,host2:26379,host3:26379/<master-name>[?db=N]';

/** `url` with the password of its credentials replaced by `***`: the form it may be logged or shown in. */
export function redactRedisUrl(url: string): string {
  return url.replace(/^([a-z+]*:\/\/)([^@/]*):([^@/]*)@/i, (_, scheme, user) => `${scheme}${user}:***@`);
}

/** Parses a Redis URL (the forms in the header); throws RedisUrlError saying what to change. */
export function parseRedisUrl(url: string): RedisTarget {
  if (url.startsWith('unix://')) {
    const path = url.slice('unix://'.length);
    if (path === '') {
      throw new RedisUrlError(
        'names no socket: give unix:// and its path, such as unix:///run/redis/redis.sock',
      );
    }
    return { kind: 'socket', path };
  }
  if (url.startsWith('redis+sentinel://')) return parseSentinelUrl(url);
  if (url.startsWith('redis://') || url.startsWith('rediss://')) return parseServerUrl(url);
  const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(url)?.[1];
  throw new RedisUrlError(
    `${scheme ? `has the scheme ${scheme}:, not a Redis one: ` : 'is not a Redis URL: '}give redis://host:port/db, rediss://..., ` +
      `unix:///path/to/socket, or for Sentinel ${SENTINEL_FORM}`,
  );
}

function parseServerUrl(url: string): RedisTarget {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new RedisUrlError(
      `is not a URL: give redis://[user:password@]host[:port][/db] ` +
        '(several hosts are the Sentinel form: redis+sentinel://host1,host2,host3/<master-name>)',
    );
  }
  const db = u.pathname.length > 1 ? database(u.pathname.slice(1), 'the path') : 0;
  return {
    kind: 'server',
    tls: u.protocol === 'rediss:',
    host: u.hostname.replace(/^\[|\]$/g, '') || '127.0.0.1',
    port: u.port === '' ? DEFAULT_REDIS_PORT : Number(u.port),
    db,
    ...credentials(u.username, u.password),
  };
}

function parseSentinelUrl(url: string): RedisTarget {
  const m = /^redis\+sentinel:\/\/(?:([^@/]*)@)?([^/?#]*)(?:\/([^?#]*))?(?:\?([^#]*))?$/.exec(url);
  if (!m) throw new RedisUrlError(`is not of the form ${SENTINEL_FORM}`);
  const [, userinfo, hostList = '', name = '', query] = m;
  const sentinels = hostList.split(',').map((h) => sentinelAddress(h.trim()));
  if (name.includes('/')) {
    throw new RedisUrlError(
      `has a path after the master name: give the master group's name alone, and the database as ?db=N (${SENTINEL_FORM})`,
    );
  }
  if (name === '') {
    throw new RedisUrlError(
      `names no master group: end the Sentinel list with /<master-name>, the name of ` +
        `"sentinel monitor <master-name> ..." in the Sentinels' configuration (${SENTINEL_FORM})`,
    );
  }
  let db = 0;
  for (const [key, value] of new URLSearchParams(query ?? '')) {
    if (key !== 'db') {
      throw new RedisUrlError(`takes only ?db=N after the master name, not ?${key}= (${SENTINEL_FORM})`);
    }
    db = database(value, '?db=');
  }
  let user = '';
  let password = '';
  if (userinfo !== undefined) {
    const colon = userinfo.indexOf(':');
    user = colon === -1 ? userinfo : userinfo.slice(0, colon);
    password = colon === -1 ? '' : userinfo.slice(colon + 1);
  }
  return {
    kind: 'sentinel',
    sentinels,
    name: decode(name, 'the master name'),
    db,
    ...credentials(user, password),
  };
}

/** One `host[:port]` of the Sentinel list. */
function sentinelAddress(text: string): HostPort {
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:[\]\s]+)(?::(\d*))?$/.exec(text);
  if (!m || m[2] === '') {
    throw new RedisUrlError(
      `has "${text}" where a Sentinel address belongs: give host or host:port (IPv6 as [::1]:26379), comma-separated, ` +
        `no spaces or empty entries (${SENTINEL_FORM})`,
    );
  }
  const port = m[2] === undefined ? DEFAULT_SENTINEL_PORT : Number(m[2]);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new RedisUrlError(
      `has the Sentinel ${text}, whose port must be 1 to 65535 (Sentinels listen on 26379 by default)`,
    );
  }
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port };
}

function database(text: string, where: string): number {
  if (!/^\d+$/.test(text) || Number(text) > 65535) {
    throw new RedisUrlError(`has ${where} "${text}", not a database number: give 0, 1, ...`);
  }
  return Number(text);
}

function decode(text: string, what: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    throw new RedisUrlError(
      `has a bad %-escape in ${what}: percent-encode it (%40 for @, %3A for :, %2F for /)`,
    );
  }
}

function credentials(username: string, password: string): Credentials {
  return {
    ...(username ? { username: decode(username, 'the user name') } : {}),
    ...(password ? { password: decode(password, 'the password') } : {}),
  };
}
