/**
 * egressd's process options: one typed interface, one DEFAULT object,
 * resolved once at start (flag, then environment, then default) and checked
 * then. The CLI is the only caller; it hands `env` over, so no other module
 * reads process.env.
 */
import { isIP } from 'node:net';
import { hostname, networkInterfaces } from 'node:os';
import ipaddr from 'ipaddr.js';
import { LOG_FORMATS, type LogFormat } from '../daemon/log.js';
import { parseHost } from '../policy/host.js';

export interface EgressdConfig {
  /**
   * host:port of the REST API.
   * @default '127.0.0.1:8080' (--listen, EGRESSD_LISTEN)
   */
  listen: string;
  /**
   * Redis URL (redis://host:port/db or unix:///path). Empty: egressd starts
   * and supervises a private redis-server under the state directory.
   * @default '' (--redis, REDIS_URL)
   */
  redisUrl: string;
  /**
   * Where the embedded Redis keeps its data and where the generated admin key lives.
   * @default '/var/lib/egressd' (--state-dir, EGRESSD_STATE_DIR)
   */
  stateDir: string;
  /**
   * bpffs directory for pinned programs, maps and links.
   * @default '/sys/fs/bpf/egressd' (--bpffs-dir, EGRESSD_BPFFS_DIR)
   */
  bpffsDir: string;
  /**
   * This host's node name: the agent enforces the computers registered on it.
   * @default the host name (--node, EGRESSD_NODE)
   */
  node: string;
  /**
   * Sandbox roots: the cgroup subtrees (relative to the cgroup2 mount) that
   * computers live under. A computer's cgroup must lie strictly below one;
   * the agent makes them when missing and guards each (a cgroup below a root
   * that no attached computer covers has no network), and refuses anything
   * else. egressd itself and its Redis must run outside them.
   * @default ['egressd'] (--cgroup-root, repeated; EGRESSD_CGROUP_ROOTS, comma-separated)
   */
  cgroupRoots: string[];
  /**
   * CIDRs reachable from every computer in every mode (platform services).
   * @default [] (--internal-cidr, repeated; EGRESSD_INTERNAL_CIDRS, comma-separated)
   */
  internalCidrs: string[];
  /**
   * pino log level.
   * @default 'info' (--log-level, EGRESSD_LOG_LEVEL)
   */
  logLevel: string;
  /**
   * Log lines: `pretty` (readable, local times), `json` (one object a line),
   * or `auto`: pretty when stdout is a terminal, JSON otherwise.
   * @default 'auto' (--log-format, EGRESSD_LOG_FORMAT)
   */
  logFormat: LogFormat;
  /**
   * The API that the client commands (policy, computers, run) talk to.
   * @default 'http://127.0.0.1:8080' (--api, EGRESSD_API)
   */
  apiUrl: string;
  /**
   * Resolvers the DNS proxy forwards to, host or host:port ([v6]:port).
   * @default the first nameserver of /etc/resolv.conf (--dns-upstream, repeated; EGRESSD_DNS_UPSTREAM, comma-separated)
   */
  dnsUpstreams: string[];
  /**
   * Addresses of this host that sandboxes in network namespaces of their own
   * can reach (for example the bridge or veth gateway); the proxy listens
   * there too and the hooks send their DNS there. Without one, such sandboxes
   * get no DNS (fail closed). At most one IPv4 and one IPv6.
   * @default [] (--dns-proxy-address, repeated; EGRESSD_DNS_PROXY_ADDRESSES, comma-separated)
   */
  dnsProxyAddresses: string[];
  /**
   * Range of the per-computer proxy ports, "min-max".
   * @default '42000-51999' (--dns-ports, EGRESSD_DNS_PORTS)
   */
  dnsPorts: string;
  /**
   * Learned addresses live for the answer's TTL, clamped to [min, max] seconds.
   * @default 5 and 3600 (--dns-ttl-min / --dns-ttl-max, EGRESSD_DNS_TTL_MIN / EGRESSD_DNS_TTL_MAX)
   */
  dnsTtlMin: string;
  dnsTtlMax: string;
  /**
   * host:port of `egressd agent`'s Prometheus /metrics, served without a key (its labels name
   * computers: keep it on loopback or a private network). In `egressd all` the API's /metrics
   * has them, behind the admin key.
   * @default '127.0.0.1:9464' (--metrics-listen, EGRESSD_METRICS_LISTEN)
   */
  metricsListen: string;
}

export const DEFAULT_CONFIG: Readonly<EgressdConfig> = Object.freeze({
  listen: '127.0.0.1:8080',
  redisUrl: '',
  stateDir: '/var/lib/egressd',
  bpffsDir: '/sys/fs/bpf/egressd',
  node: '',
  cgroupRoots: ['egressd'],
  internalCidrs: [],
  logLevel: 'info',
  logFormat: 'auto',
  apiUrl: 'http://127.0.0.1:8080',
  dnsUpstreams: [],
  dnsProxyAddresses: [],
  dnsPorts: '42000-51999',
  dnsTtlMin: '5',
  dnsTtlMax: '3600',
  metricsListen: '127.0.0.1:9464',
});

const SOURCES: Record<keyof EgressdConfig, { flag: string; env: string }> = {
  listen: { flag: 'listen', env: 'EGRESSD_LISTEN' },
  redisUrl: { flag: 'redis', env: 'REDIS_URL' },
  stateDir: { flag: 'state-dir', env: 'EGRESSD_STATE_DIR' },
  bpffsDir: { flag: 'bpffs-dir', env: 'EGRESSD_BPFFS_DIR' },
  node: { flag: 'node', env: 'EGRESSD_NODE' },
  cgroupRoots: { flag: 'cgroup-root', env: 'EGRESSD_CGROUP_ROOTS' },
  internalCidrs: { flag: 'internal-cidr', env: 'EGRESSD_INTERNAL_CIDRS' },
  logLevel: { flag: 'log-level', env: 'EGRESSD_LOG_LEVEL' },
  logFormat: { flag: 'log-format', env: 'EGRESSD_LOG_FORMAT' },
  apiUrl: { flag: 'api', env: 'EGRESSD_API' },
  dnsUpstreams: { flag: 'dns-upstream', env: 'EGRESSD_DNS_UPSTREAM' },
  dnsProxyAddresses: { flag: 'dns-proxy-address', env: 'EGRESSD_DNS_PROXY_ADDRESSES' },
  dnsPorts: { flag: 'dns-ports', env: 'EGRESSD_DNS_PORTS' },
  dnsTtlMin: { flag: 'dns-ttl-min', env: 'EGRESSD_DNS_TTL_MIN' },
  dnsTtlMax: { flag: 'dns-ttl-max', env: 'EGRESSD_DNS_TTL_MAX' },
  metricsListen: { flag: 'metrics-listen', env: 'EGRESSD_METRICS_LISTEN' },
};

const LISTS = new Set<keyof EgressdConfig>([
  'cgroupRoots',
  'internalCidrs',
  'dnsUpstreams',
  'dnsProxyAddresses',
]);

/** The flags of the options above, for node:util parseArgs. */
export const CONFIG_FLAGS = Object.fromEntries(
  Object.entries(SOURCES).map(([name, s]) => [
    s.flag,
    LISTS.has(name as keyof EgressdConfig)
      ? { type: 'string' as const, multiple: true as const }
      : { type: 'string' as const },
  ]),
) as Record<string, { type: 'string'; multiple?: true }>;

/**
 * The environment variables that resolve to `config` again: how `egressd all`
 * hands its configuration to its agent process (flags would show a Redis
 * password in the process list).
 */
export function configEnvironment(config: EgressdConfig): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [name, { env: variable }] of Object.entries(SOURCES)) {
    const value = config[name as keyof EgressdConfig];
    env[variable] = Array.isArray(value) ? value.join(',') : value;
  }
  return env;
}

export class ConfigError extends Error {}

const NODE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

/** Resolves and checks every option; throws ConfigError naming the flag or variable to fix. */
export function resolveEgressdConfig(
  flags: Record<string, string | string[] | boolean | undefined>,
  env: Record<string, string | undefined>,
): EgressdConfig {
  const pick = (name: keyof EgressdConfig): string | string[] | undefined => {
    const { flag, env: variable } = SOURCES[name];
    const given = flags[flag];
    if (given !== undefined && typeof given !== 'boolean') return given;
    const fromEnv = env[variable];
    if (fromEnv === undefined || fromEnv === '') return undefined;
    return LISTS.has(name)
      ? fromEnv
          .split(',')
          .map((s) => s.trim())
          .filter(Boolean)
      : fromEnv;
  };
  type ListName = 'cgroupRoots' | 'internalCidrs' | 'dnsUpstreams' | 'dnsProxyAddresses';
  const text = (name: Exclude<keyof EgressdConfig, ListName>) => {
    const v = pick(name);
    return typeof v === 'string' ? v : DEFAULT_CONFIG[name];
  };
  const list = (name: ListName) => {
    const v = pick(name);
    return Array.isArray(v) ? v : typeof v === 'string' ? [v] : [];
  };
  const config: EgressdConfig = {
    listen: text('listen'),
    redisUrl: text('redisUrl'),
    stateDir: text('stateDir'),
    bpffsDir: text('bpffsDir'),
    node: text('node') || hostname(),
    cgroupRoots: pick('cgroupRoots') === undefined ? [...DEFAULT_CONFIG.cgroupRoots] : list('cgroupRoots'),
    internalCidrs: list('internalCidrs'),
    logLevel: text('logLevel'),
    logFormat: text('logFormat') as LogFormat,
    apiUrl: text('apiUrl'),
    dnsUpstreams: list('dnsUpstreams'),
    dnsProxyAddresses: list('dnsProxyAddresses'),
    dnsPorts: text('dnsPorts'),
    dnsTtlMin: text('dnsTtlMin'),
    dnsTtlMax: text('dnsTtlMax'),
    metricsListen: text('metricsListen'),
  };
  const where = (name: keyof EgressdConfig) => `--${SOURCES[name].flag} / ${SOURCES[name].env}`;
  if (!/^[^:]*:\d{1,5}$|^\[[0-9a-fA-F:.]+\]:\d{1,5}$/.test(config.listen)) {
    throw new ConfigError(
      `${where('listen')}: "${config.listen}" must be host:port, for example 127.0.0.1:8080`,
    );
  }
  if (config.redisUrl && !/^(redis|rediss|unix):\/\//.test(config.redisUrl)) {
    throw new ConfigError(
      `${where('redisUrl')}: "${config.redisUrl}" must start with redis://, rediss:// or unix:// (leave it empty for the embedded Redis)`,
    );
  }
  for (const name of ['stateDir', 'bpffsDir'] as const) {
    if (!config[name].startsWith('/'))
      throw new ConfigError(`${where(name)}: "${config[name]}" must be an absolute path`);
  }
  if (!NODE_NAME.test(config.node)) {
    throw new ConfigError(
      `${where('node')}: "${config.node}" must be 1 to 128 letters, digits, ".", "_" or "-", starting with a letter or digit`,
    );
  }
  config.cgroupRoots = config.cgroupRoots.map((r) => r.replace(/^\/+/, '').replace(/\/+$/, ''));
  for (const root of config.cgroupRoots) {
    if (root === '' || root.split('/').some((s) => s === '' || s === '.' || s === '..')) {
      throw new ConfigError(
        `${where('cgroupRoots')}: "${root}" must name a cgroup below the cgroup2 mount's root, for example egressd (the root itself would guard the whole host)`,
      );
    }
  }
  if (config.cgroupRoots.length === 0) {
    throw new ConfigError(`${where('cgroupRoots')}: give at least one sandbox root, for example egressd`);
  }
  for (const cidr of config.internalCidrs) {
    let ok = false;
    try {
      ok = parseHost(cidr).kind === 'cidr';
    } catch {}
    if (!ok)
      throw new ConfigError(`${where('internalCidrs')}: "${cidr}" is not an IPv4/IPv6 address or CIDR block`);
  }
  if (!LOG_LEVELS.includes(config.logLevel)) {
    throw new ConfigError(
      `${where('logLevel')}: "${config.logLevel}" must be one of ${LOG_LEVELS.join(', ')}`,
    );
  }
  if (!(LOG_FORMATS as readonly string[]).includes(config.logFormat)) {
    throw new ConfigError(
      `${where('logFormat')}: "${config.logFormat}" must be one of ${LOG_FORMATS.join(', ')}`,
    );
  }
  try {
    new URL(config.apiUrl);
  } catch {
    throw new ConfigError(
      `${where('apiUrl')}: "${config.apiUrl}" must be a URL such as http://127.0.0.1:8080`,
    );
  }
  if (!/^[^:]*:\d{1,5}$|^\[[0-9a-fA-F:.]+\]:\d{1,5}$/.test(config.metricsListen)) {
    throw new ConfigError(
      `${where('metricsListen')}: "${config.metricsListen}" must be host:port, for example 127.0.0.1:9464`,
    );
  }
  const ports = /^(\d{1,5})-(\d{1,5})$/.exec(config.dnsPorts);
  if (!ports || Number(ports[1]) < 1024 || Number(ports[2]) > 65535 || Number(ports[1]) > Number(ports[2])) {
    throw new ConfigError(
      `${where('dnsPorts')}: "${config.dnsPorts}" must be "min-max" within 1024-65535, for example 42000-51999`,
    );
  }
  for (const name of ['dnsTtlMin', 'dnsTtlMax'] as const) {
    if (!/^\d{1,6}$/.test(config[name]))
      throw new ConfigError(`${where(name)}: "${config[name]}" must be a number of seconds`);
  }
  if (Number(config.dnsTtlMin) > Number(config.dnsTtlMax)) {
    throw new ConfigError(
      `${where('dnsTtlMin')} (${config.dnsTtlMin}) must not exceed ${where('dnsTtlMax')} (${config.dnsTtlMax})`,
    );
  }
  for (const upstream of config.dnsUpstreams) {
    if (!parseHostPort(upstream, 53)) {
      throw new ConfigError(
        `${where('dnsUpstreams')}: "${upstream}" must be an IP address, optionally with :port ([v6]:port)`,
      );
    }
  }
  const families = config.dnsProxyAddresses.map((a) => (isIP(a) === 4 ? 4 : isIP(a) === 6 ? 6 : 0));
  if (
    families.includes(0) ||
    families.filter((f) => f === 4).length > 1 ||
    families.filter((f) => f === 6).length > 1
  ) {
    throw new ConfigError(
      `${where('dnsProxyAddresses')}: give at most one IPv4 and one IPv6 address of this host (got ${config.dnsProxyAddresses.join(', ')})`,
    );
  }
  return config;
}

/**
 * Every --dns-proxy-address must be an address of this host (the proxy
 * binds each computer's port there; the hooks send sandboxes' DNS there):
 * one that is not would leave those sandboxes without DNS, with a bind
 * error for each computer. Checked at the agent's start, not in
 * resolveEgressdConfig (the client commands share the flags).
 * `interfaces`: os.networkInterfaces(), or a test's.
 */
export function checkProxyAddressesLocal(
  addresses: readonly string[],
  interfaces: Readonly<Record<string, readonly { address: string }[] | undefined>> = networkInterfaces(),
): void {
  const own = new Map<string, string>();
  for (const [name, infos] of Object.entries(interfaces)) {
    for (const i of infos ?? []) {
      if (ipaddr.isValid(i.address)) own.set(ipaddr.parse(i.address).toString(), name);
    }
  }
  for (const address of addresses) {
    if (ipaddr.isValid(address) && own.has(ipaddr.parse(address).toString())) continue;
    const shown = [...own]
      .filter(([a]) => isIP(a) === isIP(address))
      .map(([a, name]) => `${a} (${name})`)
      .join(', ');
    throw new ConfigError(
      `--dns-proxy-address / EGRESSD_DNS_PROXY_ADDRESSES: ${address} is not an address of this host` +
        (shown === '' ? '' : ` (its IPv${isIP(address) || 4} addresses: ${shown})`) +
        `: give the address sandboxes reach this host at, such as the host side of their veth (ip -brief address), or add it first (ip address add ${address}/${isIP(address) === 6 ? 64 : 24} dev IFACE)`,
    );
  }
}

/** "1.2.3.4", "1.2.3.4:5353", "[2001:db8::1]:53" or "2001:db8::1" → host and port. */
export function parseHostPort(text: string, defaultPort: number): { host: string; port: number } | undefined {
  const bracket = /^\[([^\]]+)\](?::(\d{1,5}))?$/.exec(text);
  const plain = /^([0-9.]+)(?::(\d{1,5}))?$/.exec(text);
  const m = bracket ?? plain ?? (isIP(text) === 6 ? [text, text, undefined] : null);
  if (!m || !isIP(m[1] ?? '')) return undefined;
  const port = m[2] === undefined ? defaultPort : Number(m[2]);
  return port >= 1 && port <= 65535 ? { host: m[1]!, port } : undefined;
}

/** The first nameserver of /etc/resolv.conf (the host's resolver). */
export function systemResolvers(text: string): string[] {
  return [...text.matchAll(/^\s*nameserver\s+(\S+)/gm)].map((m) =>
    isIP(m[1] ?? '') === 6 ? `[${m[1]}]` : (m[1] ?? ''),
  );
}
