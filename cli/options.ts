/**
 * The table of egressd's options, every mode's: flag, environment
 * variable, default, what `egressd --help` says, and the zod schema that
 * checks and converts the value. cli/config.ts resolves it, prints it as
 * help and hands its flags to parseArgs, so help, parsing and checks
 * cannot drift apart. An option added here is everywhere at once.
 */
import { isIP } from 'node:net';
import { hostname } from 'node:os';
import { z } from 'zod';
import { parseHostPort } from '../daemon/dns/upstream.js';
import { LOG_FORMATS } from '../daemon/log.js';
import { parseHost } from '../policy/host.js';
import { parseRedisUrl, redactRedisUrl } from '../store/redis-url.js';

export interface Option {
  /** Without "--". None: the environment only (a key on a command line shows in ps). */
  flag?: string;
  env: string;
  /** As a flag would give it; a function is called at start. */
  default: string | readonly string[] | (() => string);
  /** What --help shows as the default, when not the default itself. */
  shown?: string;
  help: string;
  /** Repeat the flag; comma-separated in the variable. */
  list?: true;
  /** Not enumerable in the resolved config (never logged or spread), never in configEnvironment. */
  secret?: true;
  /** The value as an error message may show it (a Redis URL without its password). */
  shownAs?: (value: string) => string;
  schema: z.ZodType;
}

const HOST_PORT = /^[^:]*:\d{1,5}$|^\[[0-9a-fA-F:.]+\]:\d{1,5}$/;
const NODE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const NODE_MESSAGE = 'must be 1 to 128 letters, digits, ".", "_" or "-", starting with a letter or digit';
const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

const hostPort = (example: string) =>
  z.string().regex(HOST_PORT, `must be host:port, for example ${example}`);
const absolutePath = z.string().startsWith('/', 'must be an absolute path');
const count = z.string().regex(/^\d+$/, 'must be a non-negative integer').transform(Number);
const seconds = z
  .string()
  .regex(/^\d{1,6}$/, 'must be a number of seconds')
  .transform(Number);

function isCidr(text: string): boolean {
  try {
    return parseHost(text).kind === 'cidr';
  } catch {
    return false;
  }
}

function isPortRange(text: string): boolean {
  const m = /^(\d{1,5})-(\d{1,5})$/.exec(text);
  return m !== null && Number(m[1]) >= 1024 && Number(m[2]) <= 65535 && Number(m[1]) <= Number(m[2]);
}

/** A cgroup path below the cgroup2 mount's root, without leading or trailing slashes. */
const cgroupRoot = z
  .string()
  .transform((r) => r.replace(/^\/+/, '').replace(/\/+$/, ''))
  .refine(
    (r) => r !== '' && !r.split('/').some((s) => s === '' || s === '.' || s === '..'),
    "must name a cgroup below the cgroup2 mount's root, for example egressd (the root itself would guard the whole host)",
  );

/** The proxy binds there too: at most one address of each family. */
const proxyAddresses = z.array(z.string()).superRefine((addresses, ctx) => {
  const families = addresses.map((a) => isIP(a));
  if (
    families.includes(0) ||
    families.filter((f) => f === 4).length > 1 ||
    families.filter((f) => f === 6).length > 1
  ) {
    ctx.addIssue({
      code: 'custom',
      message: `give at most one IPv4 and one IPv6 address of this host (got ${addresses.join(', ')})`,
    });
  }
});

/** Every option of every mode, in --help's order. */
export const OPTIONS = {
  listen: {
    flag: 'listen',
    env: 'EGRESSD_LISTEN',
    default: '127.0.0.1:8080',
    help: 'host:port the REST API listens on (all, api)',
    schema: hostPort('127.0.0.1:8080'),
  },
  redisUrl: {
    flag: 'redis',
    env: 'REDIS_URL',
    default: '',
    shown: 'none: all starts a private redis-server under the state directory',
    help:
      'the Redis that agent and api share: redis://[user:password@]host:port/db, rediss://... (TLS), ' +
      'unix:///path/to/socket, or through Sentinel redis+sentinel://[user:password@]host1:26379,host2:26379,' +
      'host3:26379/<master-name>[?db=N] (the name of "sentinel monitor"; the password is the Redis servers\')',
    shownAs: redactRedisUrl,
    schema: z.string().superRefine((v, ctx) => {
      if (v === '') return; // the embedded Redis (egressd all)
      try {
        parseRedisUrl(v);
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: err instanceof Error ? err.message : String(err) });
      }
    }),
  },
  // Only egressd api (and all) writes what the WAIT protects: store/connection.ts write().
  redisMinReplicas: {
    flag: 'redis-min-replicas',
    env: 'EGRESSD_REDIS_MIN_REPLICAS',
    default: '0',
    help:
      'replicas of the Redis primary that must have each change before the API acknowledges it (WAIT): fewer ' +
      'within --redis-replica-timeout answer 503 replication_timeout. 0: acknowledged once the primary has it',
    schema: count,
  },
  redisReplicaTimeoutMs: {
    flag: 'redis-replica-timeout',
    env: 'EGRESSD_REDIS_REPLICA_TIMEOUT',
    default: '1000',
    help: 'milliseconds a change waits for --redis-min-replicas replicas',
    schema: count.pipe(
      z
        .number()
        .min(1, 'must be at least 1 millisecond (WAIT with 0 would wait for ever)')
        .max(60_000, 'must be at most 60000 milliseconds (a request waits this long for each change)'),
    ),
  },
  stateDir: {
    flag: 'state-dir',
    env: 'EGRESSD_STATE_DIR',
    default: '/var/lib/egressd',
    help:
      "the embedded Redis's data, the generated admin key, and the id of the store each agent follows " +
      '(agent-<node>.store-id.json: a Redis that comes back empty is not followed until "egressd store accept")',
    schema: absolutePath,
  },
  bpffsDir: {
    flag: 'bpffs-dir',
    env: 'EGRESSD_BPFFS_DIR',
    default: '/sys/fs/bpf/egressd',
    help: 'bpffs directory of the pinned programs, maps and links',
    schema: absolutePath,
  },
  node: {
    flag: 'node',
    env: 'EGRESSD_NODE',
    default: () => hostname(),
    shown: 'the host name',
    help: "this host's node name: the agent enforces the computers registered on it",
    schema: z
      .string()
      .transform((v) => v || hostname())
      .pipe(z.string().regex(NODE_NAME, NODE_MESSAGE)),
  },
  // A computer's cgroup must lie strictly below a root; the agent makes the roots when missing and
  // guards each (a cgroup below one that no attached computer covers has no network). egressd itself
  // and its Redis must run outside them.
  cgroupRoots: {
    flag: 'cgroup-root',
    env: 'EGRESSD_CGROUP_ROOTS',
    default: ['egressd'],
    list: true,
    help: 'sandbox roots: the cgroups (relative to the cgroup2 mount) that computers live below',
    schema: z.array(cgroupRoot).min(1, 'give at least one sandbox root, for example egressd'),
  },
  internalCidrs: {
    flag: 'internal-cidr',
    env: 'EGRESSD_INTERNAL_CIDRS',
    default: [],
    list: true,
    help: 'CIDRs every computer reaches in every mode (platform services)',
    schema: z.array(z.string().refine(isCidr, 'is not an IPv4/IPv6 address or CIDR block')),
  },
  revocation: {
    flag: 'revocation',
    env: 'EGRESSD_REVOCATION',
    default: 'on',
    help: "on: a policy change closes the computer's connections it no longer allows (Linux 6.5+); off: it does not",
    schema: z.enum(['on', 'off'], 'must be on or off'),
  },
  observe: {
    flag: 'observe',
    env: 'EGRESSD_OBSERVE',
    default: 'all',
    help: 'whose connects and sends the kernel counts for the suggested allowlist: all computers, those in audit, or off (costs about 0.17 µs a call)',
    schema: z.enum(['all', 'audit', 'off'], 'must be all, audit or off'),
  },
  logLevel: {
    flag: 'log-level',
    env: 'EGRESSD_LOG_LEVEL',
    default: 'info',
    help: LOG_LEVELS.join(', '),
    schema: z.enum(LOG_LEVELS, `must be one of ${LOG_LEVELS.join(', ')}`),
  },
  logFormat: {
    flag: 'log-format',
    env: 'EGRESSD_LOG_FORMAT',
    default: 'auto',
    help: 'pretty: readable lines, local times; json: one JSON object a line; auto: pretty on a terminal',
    schema: z.enum(LOG_FORMATS, `must be one of ${LOG_FORMATS.join(', ')}`),
  },
  apiUrl: {
    flag: 'api',
    env: 'EGRESSD_API',
    default: 'http://127.0.0.1:8080',
    help: 'the API the client commands talk to',
    schema: z.string().refine((v) => URL.canParse(v), 'must be a URL such as http://127.0.0.1:8080'),
  },
  apiKey: {
    env: 'EGRESSD_API_KEY',
    default: '',
    shown: 'the key in <state-dir>/admin.key',
    help: 'the key the client commands use',
    secret: true,
    schema: z.string(),
  },
  adminKey: {
    env: 'EGRESSD_ADMIN_KEY',
    default: '',
    shown: 'generated into <state-dir>/admin.key',
    help: "the API's admin bearer key",
    secret: true,
    schema: z.string(),
  },
  dnsUpstreams: {
    flag: 'dns-upstream',
    env: 'EGRESSD_DNS_UPSTREAM',
    default: [],
    list: true,
    shown: 'the nameservers of /etc/resolv.conf',
    help:
      'resolvers the DNS proxy forwards to, host[:port] ([v6]:port), asked in order: the next when one ' +
      'does not answer in 3 s, cannot be reached, or answers SERVFAIL, NOTIMP or REFUSED',
    schema: z.array(
      z
        .string()
        .refine(
          (u) => parseHostPort(u, 53) !== undefined,
          'must be an IP address, optionally with :port ([v6]:port)',
        ),
    ),
  },
  dnsProxyAddresses: {
    flag: 'dns-proxy-address',
    env: 'EGRESSD_DNS_PROXY_ADDRESSES',
    default: [],
    list: true,
    help:
      "this host's address that sandboxes with a network namespace of their own reach (their gateway); " +
      'the proxy listens there too. Without one they get no DNS. At most one IPv4 and one IPv6',
    schema: proxyAddresses,
  },
  dnsPorts: {
    flag: 'dns-ports',
    env: 'EGRESSD_DNS_PORTS',
    default: '42000-51999',
    help: 'range of the per-computer DNS proxy ports',
    schema: z.string().refine(isPortRange, 'must be "min-max" within 1024-65535, for example 42000-51999'),
  },
  dnsTtlMin: {
    flag: 'dns-ttl-min',
    env: 'EGRESSD_DNS_TTL_MIN',
    default: '5',
    help: "seconds: learned addresses live for the answer's TTL clamped to [min, max]",
    schema: seconds,
  },
  dnsTtlMax: {
    flag: 'dns-ttl-max',
    env: 'EGRESSD_DNS_TTL_MAX',
    default: '3600',
    help: 'seconds (see --dns-ttl-min)',
    schema: seconds,
  },
  metricsListen: {
    flag: 'metrics-listen',
    env: 'EGRESSD_METRICS_LISTEN',
    default: '127.0.0.1:9464',
    help: "egressd agent's Prometheus /metrics, without a key (keep it private); in all, the API's /metrics has them",
    schema: hostPort('127.0.0.1:9464'),
  },
  defaultNode: {
    flag: 'default-node',
    env: 'EGRESSD_DEFAULT_NODE',
    default: '',
    shown: 'none (all: --node)',
    help: 'egressd api: the node of a computer registered without one (none: node is required)',
    schema: z.string().refine((v) => v === '' || NODE_NAME.test(v), NODE_MESSAGE),
  },
  workers: {
    flag: 'api-workers',
    env: 'EGRESSD_API_WORKERS',
    default: '1',
    help: 'processes serving the API (node:cluster; they share the listening socket and nothing but Redis)',
    schema: count.pipe(z.number().min(1, 'must be at least 1')),
  },
  waitTimeoutMs: {
    flag: 'wait-timeout-ms',
    env: 'EGRESSD_WAIT_TIMEOUT_MS',
    default: '5000',
    help: "how long PUT and DELETE of a policy wait for the agent's acknowledgement without ?wait=",
    schema: count,
  },
  maxWaitMs: {
    flag: 'max-wait-ms',
    env: 'EGRESSD_MAX_WAIT_MS',
    default: '60000',
    help: 'the largest ?wait= (milliseconds) a request may ask for',
    schema: count,
  },
  bodyLimitBytes: {
    flag: 'body-limit',
    env: 'EGRESSD_BODY_LIMIT',
    default: '1048576',
    help: 'the largest request body, bytes (413 beyond)',
    schema: count,
  },
  maxRules: {
    flag: 'max-rules',
    env: 'EGRESSD_MAX_RULES',
    default: '10000',
    help: 'the most rules in one policy',
    schema: count,
  },
  streamMaxLen: {
    flag: 'stream-maxlen',
    env: 'EGRESSD_STREAM_MAXLEN',
    default: '10000',
    help: "about the most entries of each node's change stream: an agent further behind resynchronises fully",
    schema: count,
  },
  ssePerKey: {
    flag: 'sse-per-key',
    env: 'EGRESSD_SSE_PER_KEY',
    default: '20',
    help: 'event streams one API key may hold open in one process (429 beyond; 0 refuses every stream)',
    schema: count,
  },
  ui: {
    flag: 'ui',
    env: 'EGRESSD_UI',
    default: 'on',
    help: 'on: the API serves the dashboard at /ui/ (sign-in with a key, cookie sessions in Redis); off: /ui/ and /ui/session are 404 and /api/v1 takes no session cookie',
    schema: z.enum(['on', 'off'], 'must be on or off'),
  },
  uiSessionIdle: {
    flag: 'ui-session-idle',
    env: 'EGRESSD_UI_SESSION_IDLE',
    default: '900',
    help: 'seconds: a dashboard session that makes no request for this long ends',
    schema: seconds.pipe(z.number().min(1, 'must be at least 1')),
  },
  uiSessionMax: {
    flag: 'ui-session-max',
    env: 'EGRESSD_UI_SESSION_MAX',
    default: '28800',
    help: 'seconds: a dashboard session ends this long after its sign-in, however busy',
    schema: seconds.pipe(z.number().min(1, 'must be at least 1')),
  },
  sseMax: {
    flag: 'sse-max',
    env: 'EGRESSD_SSE_MAX',
    default: '2000',
    help: 'event streams one process holds open (503 beyond); wants open files ≥ 2 × this + 1024',
    schema: count,
  },
} satisfies Record<string, Option>;
