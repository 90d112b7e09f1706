/**
 * Request validation: zod schemas that also normalise (hosts, cgroup paths),
 * and the one place that turns zod issues into 400s naming the field path
 * (`rules[3].port: must be an integer from 1 to 65535`).
 */
import ipaddr from 'ipaddr.js';
import { z } from 'zod';
import { HostError, normaliseHost } from '../policy/host.js';
import {
  COMPUTER_ID_PATTERN,
  DNS_MODES,
  defaultDns,
  dnsProblem,
  MODES,
  modeTakesRules,
  type Policy,
  PROTOCOLS,
  type Rule,
} from '../policy/types.js';
import { ApiError, type FieldIssue, RULES_REQUIRED } from './errors.js';

/** Tenant names: 1–128 of [A-Za-z0-9._-], starting with a letter or digit. */
export const ID_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$';
const ID_RE = new RegExp(ID_PATTERN);
const ID_MESSAGE =
  'must be 1 to 128 characters of A-Z, a-z, 0-9, ".", "_" or "-", starting with a letter or digit';

/** Computer ids: like tenant names, or `<tenant>~<name>` (a tenant's namespace); at most 200 characters. */
export { COMPUTER_ID_SOURCE } from '../policy/types.js';

const COMPUTER_ID_MESSAGE =
  'must be a name of A-Z, a-z, 0-9, ".", "_" or "-" starting with a letter or digit, optionally after "<tenant>~", at most 200 characters';
/** Node names: like ids, up to 253 characters (a host name fits). */
export const NODE_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$';
const NODE_RE = new RegExp(NODE_PATTERN);

const PORT_MESSAGE = 'must be an integer from 1 to 65535';

/**
 * normaliseHost is pure, and policies repeat the same hosts (github.com,
 * pypi.org, ...) across computers, so successful results are memoised; the
 * memo is dropped whole when it reaches MEMO_MAX entries. (Parsing a hostname
 * costs tens of microseconds, most of it in ipaddr.js ruling out an address.)
 */
const MEMO_MAX = 50_000;
const normalised = new Map<string, string>();
function normaliseHostMemo(text: string): string {
  const hit = normalised.get(text);
  if (hit !== undefined) return hit;
  const value = normaliseHost(text);
  if (normalised.size >= MEMO_MAX) normalised.clear();
  normalised.set(text, value);
  return value;
}

const host = z
  .string({ error: 'must be a string: an address, a CIDR block or a hostname' })
  .transform((text, ctx) => {
    try {
      return normaliseHostMemo(text);
    } catch (err) {
      if (!(err instanceof HostError)) throw err;
      ctx.issues.push({ code: 'custom', message: err.message, input: text });
      return z.NEVER;
    }
  });

const rule = z.strictObject({
  host,
  port: z
    .int({ error: PORT_MESSAGE })
    .min(1, { error: PORT_MESSAGE })
    .max(65535, { error: PORT_MESSAGE })
    .optional(),
  protocol: z.enum(PROTOCOLS, { error: `must be one of ${PROTOCOLS.join(', ')}` }).default('any'),
});

const policyBody = z.strictObject({
  mode: z.enum(MODES, { error: `must be one of ${MODES.join(', ')}` }),
  rules: z.array(rule, { error: 'must be an array of rules' }).optional(),
  dns: z.enum(DNS_MODES, { error: `must be one of ${DNS_MODES.join(', ')}` }).optional(),
  /** Before `dns`: true is `"dns": "none"`. Replies still carry it (`dns` is "none"). */
  block_dns: z.boolean({ error: 'must be true or false' }).optional(),
});

/** Validates and normalises a PUT network-policy body. */
export function parsePolicy(body: unknown, maxRules: number): Policy {
  if (isObject(body) && Array.isArray(body['rules']) && body['rules'].length > maxRules) {
    throw new ApiError(
      400,
      'too_many_rules',
      `rules: at most ${maxRules} rules per policy, got ${body['rules'].length}; merge rules into CIDR blocks or wildcards`,
    );
  }
  const parsed = policyBody.safeParse(body);
  if (!parsed.success) throw invalid(parsed.error.issues);
  const { mode, rules = [], dns: given, block_dns: blockDns } = parsed.data;
  if (modeTakesRules(mode) && rules.length === 0) {
    throw new ApiError(400, 'rules_required', RULES_REQUIRED);
  }
  if (!modeTakesRules(mode) && rules.length > 0) {
    throw new ApiError(
      400,
      'rules_not_allowed',
      `rules: ${mode} mode takes no rules; send "rules": [] or leave it out, or use allowlist or denylist`,
    );
  }
  // Fixed key order, so that equal policies serialise to equal JSON.
  const normalised: Rule[] = rules.map((r) =>
    r.port === undefined
      ? { host: r.host, protocol: r.protocol }
      : { host: r.host, port: r.port, protocol: r.protocol },
  );
  if (blockDns !== undefined && given !== undefined && blockDns !== (given === 'none')) {
    throw new ApiError(
      400,
      'dns_not_allowed',
      `block_dns: ${blockDns} contradicts "dns": "${given}" (block_dns true is "dns": "none"); send dns alone`,
    );
  }
  const dns = given ?? (blockDns ? 'none' : defaultDns(mode, normalised));
  const problem = dnsProblem(mode, normalised, dns);
  if (problem !== undefined) {
    const said =
      given === undefined && blockDns
        ? `block_dns: true is "dns": "none", which does not fit: ${problem}`
        : problem;
    throw new ApiError(400, 'dns_not_allowed', said);
  }
  return { mode, rules: normalised, dns };
}

const cgroup = z
  .string({ error: 'must be a string: the cgroup path relative to the cgroup2 mount' })
  .transform((text, ctx) => {
    const path = text.replace(/^\/+/, '').replace(/\/+$/, '');
    const segments = path.split('/');
    let why = '';
    if (path === '') why = 'must name a cgroup below the root, for example "egressd/sandbox-1"';
    else if (text.length > 4096) why = 'must be at most 4096 characters';
    else if (segments.some((s) => s === '' || s === '.' || s === '..'))
      why = 'must not contain empty, "." or ".." segments';
    else if (/[\0\n]/.test(path)) why = 'must not contain NUL or newline characters';
    if (why !== '') {
      ctx.issues.push({ code: 'custom', message: why, input: text });
      return z.NEVER;
    }
    return path;
  });

const DNS_UPSTREAM_MESSAGE =
  'must be the IP address of a resolver reachable from the agent\'s host, optionally with a port: "10.88.0.1", "10.88.0.1:5353" or "[fd00::1]:53" (a host name is not accepted; null removes it)';

/**
 * A computer's `dns_upstream` → its stored form, "address:port" or
 * "[v6address]:port" (port 53 when not given; the address normalised), or
 * undefined when it is not one. An unspecified, multicast or broadcast
 * address resolves nothing.
 */
export function normaliseDnsUpstream(text: string): string | undefined {
  const bracketed = /^\[([0-9a-fA-F:.]+)\](?::(\d{1,5}))?$/.exec(text);
  const dotted = /^(\d{1,3}(?:\.\d{1,3}){3})(?::(\d{1,5}))?$/.exec(text);
  let host: string;
  let port = 53;
  if (bracketed?.[1] !== undefined && ipaddr.IPv6.isValid(bracketed[1])) {
    host = bracketed[1];
    if (bracketed[2] !== undefined) port = Number(bracketed[2]);
  } else if (dotted?.[1] !== undefined && ipaddr.IPv4.isValidFourPartDecimal(dotted[1])) {
    host = dotted[1];
    if (dotted[2] !== undefined) port = Number(dotted[2]);
  } else if (/^[0-9a-fA-F:.]+$/.test(text) && text.includes(':') && ipaddr.IPv6.isValid(text)) {
    host = text; // a bare IPv6 address: port 53
  } else {
    return undefined;
  }
  if (port < 1 || port > 65535) return undefined;
  const addr = ipaddr.parse(host);
  if (['unspecified', 'multicast', 'broadcast'].includes(addr.range())) return undefined;
  return addr.kind() === 'ipv6' ? `[${addr.toString()}]:${port}` : `${addr.toString()}:${port}`;
}

const dnsUpstream = z.string({ error: DNS_UPSTREAM_MESSAGE }).transform((text, ctx) => {
  const stored = normaliseDnsUpstream(text.trim());
  if (stored === undefined) ctx.addIssue({ code: 'custom', message: DNS_UPSTREAM_MESSAGE });
  return stored ?? '';
});

const computerBody = z.strictObject({
  cgroup,
  node: z
    .string({ error: 'must be a string' })
    .regex(NODE_RE, { error: ID_MESSAGE.replace('128', '253') })
    .optional(),
  tenant: z
    .string({ error: 'must be a string, or null for none' })
    .regex(ID_RE, { error: ID_MESSAGE })
    .nullable()
    .optional(),
  /** The resolver the DNS proxy forwards this computer's queries to; absent keeps it, null removes it. */
  dns_upstream: dnsUpstream.nullable().optional(),
});
export type ComputerBody = z.output<typeof computerBody>;

/** Validates a PUT /computers/{id} body. */
export function parseComputer(body: unknown): ComputerBody {
  const parsed = computerBody.safeParse(body);
  if (!parsed.success) throw invalid(parsed.error.issues);
  return parsed.data;
}

const keyBody = z.strictObject({
  tenant: z.string({ error: 'must be a string' }).regex(ID_RE, { error: ID_MESSAGE }),
  cgroup_prefix: cgroup.optional(),
  name: z
    .string({ error: 'must be a string' })
    .max(200, { error: 'must be at most 200 characters' })
    .optional(),
});
export type KeyBody = z.output<typeof keyBody>;

/** Validates a POST /keys body. */
export function parseKeyBody(body: unknown): KeyBody {
  const parsed = keyBody.safeParse(body);
  if (!parsed.success) throw invalid(parsed.error.issues);
  return parsed.data;
}

/** `child` lies strictly below `parent` ('' is the mount's root). */
export function isBelow(child: string, parent: string): boolean {
  return parent === '' ? child !== '' : child.startsWith(`${parent}/`);
}

/** Checks that a cgroup (normalised) lies strictly below one of the roots; 400 naming them otherwise. */
export function checkUnderRoots(cgroup: string, roots: readonly string[], field: string): void {
  if (roots.some((r) => isBelow(cgroup, r))) return;
  throw new ApiError(
    400,
    'cgroup_outside_roots',
    `${field}: "${cgroup}" is not below a sandbox root of this service (${roots.map((r) => `"${r}"`).join(', ')}); put the computer's cgroup below one, for example "${roots[0] ? `${roots[0]}/` : ''}sandbox-1"`,
  );
}

/**
 * An absolute path in the file system (`/sys/fs/cgroup/unified/egressd/x`)
 * is refused with what to send instead: the API cannot know where the
 * computer's host mounts cgroup2, so it cannot make the path relative
 * itself (the egressd CLI does, with its host's mount). A leading "/" alone
 * is fine: `/egressd/x` is how /proc/PID/cgroup shows a cgroup. Checked when
 * the path, without its "/", is not below one of `bases` (the sandbox roots,
 * or a tenant key's prefix) but a tail of it is, or it starts with /sys/.
 */
export function checkRelative(raw: unknown, cgroup: string, bases: readonly string[], field: string): void {
  if (typeof raw !== 'string' || !raw.startsWith('/') || bases.some((b) => isBelow(cgroup, b))) return;
  const segments = cgroup.split('/');
  let tail: string | undefined;
  for (let k = 1; k < segments.length && tail === undefined; k++) {
    const candidate = segments.slice(k).join('/');
    if (bases.some((b) => b !== '' && isBelow(candidate, b))) tail = candidate;
  }
  if (tail === undefined && segments[0] !== 'sys') return;
  const mount =
    tail === undefined
      ? undefined
      : `/${segments.slice(0, segments.length - tail.split('/').length).join('/')}`;
  throw new ApiError(
    400,
    'cgroup_not_relative',
    `${field}: "${raw}" looks like a path in the file system; send the cgroup's path relative to the cgroup2 mount` +
      (tail === undefined
        ? ', for example "egressd/sandbox-1" (or as /proc/PID/cgroup shows it)'
        : ` ("${tail}" if cgroup2 is mounted at ${mount})`) +
      ': the API cannot know where that host mounts cgroup2 (the egressd CLI converts absolute paths itself)',
  );
}

/** Checks a computer id from the path. */
export function checkComputerId(id: string): string {
  if (!COMPUTER_ID_PATTERN.test(id)) {
    throw new ApiError(400, 'invalid_request', `id: ${COMPUTER_ID_MESSAGE}`, [
      { path: 'id', message: COMPUTER_ID_MESSAGE },
    ]);
  }
  return id;
}

/** Checks a node name from a query string. */
export function checkNode(node: string, field: string): string {
  if (!NODE_RE.test(node)) {
    throw new ApiError(400, 'invalid_request', `${field}: ${ID_MESSAGE.replace('128', '253')}`);
  }
  return node;
}

/** Parses an optional non-negative integer query parameter. */
export function queryInt(value: unknown, name: string, min: number, max: number): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || !/^\d+$/.test(value) || Number(value) < min || Number(value) > max) {
    throw new ApiError(400, 'invalid_request', `${name}: must be an integer from ${min} to ${max}`);
  }
  return Number(value);
}

function invalid(issues: readonly z.core.$ZodIssue[]): ApiError {
  const details: FieldIssue[] = [];
  for (const issue of issues) {
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys) {
        details.push({ path: formatPath([...issue.path, key]), message: 'unknown field; remove it' });
      }
    } else {
      details.push({ path: formatPath(issue.path), message: issue.message });
    }
  }
  const shown = details
    .slice(0, 5)
    .map((d) => (d.path === '' ? `body: ${d.message}` : `${d.path}: ${d.message}`));
  const more = details.length > 5 ? `; and ${details.length - 5} more` : '';
  return new ApiError(400, 'invalid_request', shown.join('; ') + more, details);
}

/** `['rules', 3, 'port']` → `rules[3].port`. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`;
    else out += out === '' ? String(part) : `.${String(part)}`;
  }
  return out;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
