/**
 * API request checks: zod schemas of the computer and key bodies that also
 * normalise (cgroup paths, DNS upstreams), names and query parameters; 400s
 * naming the field path. The policy body's schema is the policy model's
 * (policy/schema.ts).
 */
import ipaddr from 'ipaddr.js';
import { z } from 'zod';
import { describeIssues } from '../policy/schema.js';
import { ApiError } from './errors.js';

/** Tenant names: 1–128 of [A-Za-z0-9._-], starting with a letter or digit. */
export const ID_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$';
const ID_RE = new RegExp(ID_PATTERN);
const ID_MESSAGE =
  'must be 1 to 128 characters of A-Z, a-z, 0-9, ".", "_" or "-", starting with a letter or digit';

/** Node names: like ids, up to 253 characters (a host name fits). */
export const NODE_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$';
const NODE_RE = new RegExp(NODE_PATTERN);

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

/** Parses an optional time query parameter (RFC 3339) into ms since the epoch. */
export function queryTime(value: unknown, name: string): number | undefined {
  if (value === undefined) return undefined;
  const ms = typeof value === 'string' ? Date.parse(value) : Number.NaN;
  if (Number.isNaN(ms)) {
    throw new ApiError(
      400,
      'invalid_request',
      `${name}: must be an RFC 3339 time, for example 2026-01-01T00:00:00Z`,
    );
  }
  return ms;
}

function invalid(issues: readonly z.core.$ZodIssue[]): ApiError {
  const { message, details } = describeIssues(issues);
  return new ApiError(400, 'invalid_request', message, details);
}
