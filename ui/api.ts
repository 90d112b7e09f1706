/**
 * The dashboard's one way to the API: same-origin fetch with the session
 * cookie (HttpOnly: the page never sees it) and, on a request that changes
 * something, the session's CSRF token, which lives in this module's memory
 * only (GET /ui/session gives it again after a reload). The key is sent once,
 * in the body of the sign-in, and never kept: nothing goes into a URL, the
 * browser's storage or a log.
 *
 * The reply shapes below mirror api/views.ts and the OpenAPI document (the
 * dashboard imports nothing from api/: it is bundled for the browser alone).
 */

export type Mode = 'unrestricted' | 'allowlist' | 'denylist' | 'isolated';
export type DnsMode = 'listed' | 'all' | 'none';
export type Protocol = 'tcp' | 'udp' | 'any';

export interface Rule {
  host: string;
  port?: number;
  protocol: Protocol;
  bind_name?: false;
}

export interface SessionView {
  kind: 'admin' | 'tenant';
  tenant: string | null;
  key_id: string | null;
  csrf_token: string;
  idle_timeout_s: number;
  expires_at: string;
}

export interface Enforcement {
  state: string;
  reason: string | null;
  enforced_version: number | null;
  enforced_at: string | null;
  revocation: 'on' | 'off' | 'unsupported' | 'failed' | null;
  revoked: number | null;
}

export interface ComputerItem {
  id: string;
  cgroup: string;
  node: string;
  tenant: string | null;
  policy: { mode: Mode; block_dns: boolean; audit: boolean; version: number; enforcement: Enforcement };
  /** With ?include=denials_1m: deny events of the last minute, counted up to a cap (`capped`: more). */
  denials_1m?: { count: number; capped: boolean };
}

export interface ComputerView {
  id: string;
  cgroup: string;
  node: string;
  tenant: string | null;
  dns_upstream: string | null;
  created_at: string;
  updated_at: string;
}

export interface PolicyView {
  computer_id: string;
  mode: Mode;
  dns: DnsMode;
  audit: boolean;
  rules: Rule[];
  version: number;
  updated_at: string;
  enforcement: Enforcement;
}

export interface LearnedName {
  name: string;
  address: string;
  expires_at: string;
}

export interface DenyEvent {
  computer: string;
  at: string;
  pid: number | null;
  comm: string | null;
  family: string | null;
  protocol: string;
  address: string | null;
  port: number | null;
  hostname: string | null;
  name?: string;
  reason: string;
  audit?: boolean;
}

export interface Observation {
  host: string;
  port: number;
  protocol: 'tcp' | 'udp';
  count: number;
  first_seen: string;
  last_seen: string;
}

export interface SuggestionView {
  policy: { mode: Mode; rules: Rule[]; dns?: DnsMode };
  rules: Array<{ rule: Rule; observations: Observation[] }>;
  wildcard_threshold: number;
  since: string | null;
  observed: number;
  skipped: Observation[];
  note: string | null;
}

/** One field's problem, as the API's `details` name it (`rules[2].port`). */
export interface FieldIssue {
  path: string;
  message: string;
}

export interface ApiErrorBody {
  code: string;
  message: string;
  details?: FieldIssue[];
}

export interface Reply<T> {
  status: number;
  /** The answer's `data` when it is a success. */
  data: T | undefined;
  error: ApiErrorBody | undefined;
  etag: string | null;
  /** The whole answer (a list's `next_cursor` is beside `data`). */
  body: { next_cursor?: string | null } | undefined;
}

let csrfToken = '';

export function setCsrfToken(token: string): void {
  csrfToken = token;
}

/** Called with every 401 under /api/v1 (the session ended): the app shows the sign-in. */
let onUnauthorized: (message: string) => void = () => {};
export function whenUnauthorized(handler: (message: string) => void): void {
  onUnauthorized = handler;
}

export async function call<T>(
  method: string,
  path: string,
  options: { body?: unknown; headers?: Record<string, string> } = {},
): Promise<Reply<T>> {
  const headers: Record<string, string> = { accept: 'application/json', ...options.headers };
  if (options.body !== undefined) headers['content-type'] = 'application/json';
  if (method !== 'GET' && method !== 'HEAD' && csrfToken !== '') headers['x-csrf-token'] = csrfToken;
  let response: Response;
  try {
    response = await fetch(path, {
      method,
      headers,
      credentials: 'same-origin',
      cache: 'no-store',
      ...(options.body === undefined ? {} : { body: JSON.stringify(options.body) }),
    });
  } catch {
    const message = 'the API did not answer (is egressd running?)';
    return {
      status: 0,
      data: undefined,
      error: { code: 'unreachable', message },
      etag: null,
      body: undefined,
    };
  }
  const text = await response.text();
  let parsed: { data?: T; error?: ApiErrorBody; next_cursor?: string | null } | undefined;
  try {
    parsed = text === '' ? undefined : JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  const error =
    response.ok || parsed?.error
      ? parsed?.error
      : { code: 'http_error', message: `the API answered ${response.status}` };
  if (response.status === 401 && path.startsWith('/api/')) onUnauthorized(error?.message ?? 'signed out');
  return {
    status: response.status,
    data: response.ok ? parsed?.data : undefined,
    error,
    etag: response.headers.get('etag'),
    body: parsed,
  };
}

/** The API's message of a failed reply. */
export function errorText(reply: Reply<unknown>): string {
  return reply.error?.message ?? `the API answered ${reply.status}`;
}

export const computerPath = (id: string) => `/api/v1/computers/${encodeURIComponent(id)}`;
export const policyPath = (id: string) => `${computerPath(id)}/network-policy`;

/**
 * Every computer the session may see, up to `maxPages` pages of 1,000, each
 * with its denials of the last minute (counted by the API, one Redis
 * pipeline a page).
 */
export async function listAllComputers(
  maxPages: number,
): Promise<{ computers: ComputerItem[]; complete: boolean } | Reply<unknown>> {
  const computers: ComputerItem[] = [];
  let cursor: string | null = null;
  for (let page = 0; page < maxPages; page++) {
    const query: string = `&include=denials_1m${cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`}`;
    const reply = await call<ComputerItem[]>('GET', `/api/v1/computers?limit=1000${query}`);
    if (reply.status !== 200) return reply;
    computers.push(...(reply.data ?? []));
    cursor = reply.body?.next_cursor ?? null;
    if (cursor === null) return { computers, complete: true };
  }
  return { computers, complete: false };
}
