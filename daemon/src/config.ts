/**
 * egressd's process options: one typed interface, one DEFAULT object,
 * resolved once at start (flag, then environment, then default) and checked
 * then. The CLI is the only caller; it hands `env` over, so no other module
 * reads process.env.
 */
import { hostname } from 'node:os';
import { parseHost } from './policy/host.js';

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
   * The API that the client commands (policy, computers, run) talk to.
   * @default 'http://127.0.0.1:8080' (--api, EGRESSD_API)
   */
  apiUrl: string;
}

export const DEFAULT_CONFIG: Readonly<EgressdConfig> = Object.freeze({
  listen: '127.0.0.1:8080',
  redisUrl: '',
  stateDir: '/var/lib/egressd',
  bpffsDir: '/sys/fs/bpf/egressd',
  node: '',
  internalCidrs: [],
  logLevel: 'info',
  apiUrl: 'http://127.0.0.1:8080',
});

const SOURCES: Record<keyof EgressdConfig, { flag: string; env: string }> = {
  listen: { flag: 'listen', env: 'EGRESSD_LISTEN' },
  redisUrl: { flag: 'redis', env: 'REDIS_URL' },
  stateDir: { flag: 'state-dir', env: 'EGRESSD_STATE_DIR' },
  bpffsDir: { flag: 'bpffs-dir', env: 'EGRESSD_BPFFS_DIR' },
  node: { flag: 'node', env: 'EGRESSD_NODE' },
  internalCidrs: { flag: 'internal-cidr', env: 'EGRESSD_INTERNAL_CIDRS' },
  logLevel: { flag: 'log-level', env: 'EGRESSD_LOG_LEVEL' },
  apiUrl: { flag: 'api', env: 'EGRESSD_API' },
};

/** The flags of the options above, for node:util parseArgs. */
export const CONFIG_FLAGS = Object.fromEntries(
  Object.entries(SOURCES).map(([name, s]) => [
    s.flag,
    name === 'internalCidrs'
      ? { type: 'string' as const, multiple: true as const }
      : { type: 'string' as const },
  ]),
) as Record<string, { type: 'string'; multiple?: true }>;

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
    return name === 'internalCidrs'
      ? fromEnv
          .split(',')
          .map((s) => s.trim())
          .filter(Boolean)
      : fromEnv;
  };
  const text = (name: Exclude<keyof EgressdConfig, 'internalCidrs'>) => {
    const v = pick(name);
    return typeof v === 'string' ? v : DEFAULT_CONFIG[name];
  };
  const cidrs = pick('internalCidrs');
  const config: EgressdConfig = {
    listen: text('listen'),
    redisUrl: text('redisUrl'),
    stateDir: text('stateDir'),
    bpffsDir: text('bpffsDir'),
    node: text('node') || hostname(),
    internalCidrs: Array.isArray(cidrs) ? cidrs : typeof cidrs === 'string' ? [cidrs] : [],
    logLevel: text('logLevel'),
    apiUrl: text('apiUrl'),
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
  try {
    new URL(config.apiUrl);
  } catch {
    throw new ConfigError(
      `${where('apiUrl')}: "${config.apiUrl}" must be a URL such as http://127.0.0.1:8080`,
    );
  }
  return config;
}
