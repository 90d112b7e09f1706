/**
 * A typed client of the API, shaped like the seed's SDK:
 *
 *   const client = new Client({ baseUrl: 'http://127.0.0.1:8080', apiKey });
 *   await client.networkPolicy.update(id, { mode: 'allowlist', rules: [{ host: 'github.com', port: 443, protocol: 'tcp' }] });
 *
 * Failures are thrown as ApiClientError with the HTTP status and the API's
 * stable code, or as ApiUnreachableError (with the URL and the system error)
 * when no answer came. `send()` is the request underneath, answering any
 * status (for tests and benchmarks). Uses the global fetch unless given one.
 */
import type { DnsMode, Mode, Protocol } from '../policy/types.js';
import { StoreApi } from './store-client.js';
import type {
  ApiKeyView,
  ComputerListItemView,
  ComputerView,
  ObservationView,
  PolicyView,
  ServiceView,
  SuggestionView,
} from './views.js';

export type { StoreView } from './store-client.js';
export type {
  ApiKeyView,
  ComputerListItemView,
  ComputerView,
  ObservationView,
  PolicyView,
  ServiceView,
  SuggestionView,
};

export interface RuleInput {
  host: string;
  port?: number;
  protocol?: Protocol;
  /**
   * Name-binding, hostname and wildcard rules only (on an address rule it is
   * a 400): false judges the rule's addresses by address alone, without
   * checking the TLS server_name or HTTP Host of a connection against the
   * names they were learned for. Default: true (replies leave it out).
   */
  bind_name?: boolean;
}

export interface PolicyInput {
  mode: Mode;
  rules?: RuleInput[];
  /**
   * What the DNS proxy resolves: `listed` (only names the hostname rules
   * cover), `all` or `none`. Default: `listed` in allowlist mode with
   * hostname rules, `none` in allowlist mode without, `all` otherwise.
   */
  dns?: DnsMode;
  /** @deprecated `dns: 'none'`. */
  block_dns?: boolean;
  /**
   * Audit mode: judged exactly as in enforcement, but what the policy would
   * refuse is let through and reported. Default: false (a PUT replaces the
   * whole policy, so leaving it out turns audit off).
   */
  audit?: boolean;
}

export interface ChangeOptions {
  /** Milliseconds to wait for the agent; 0 answers at once. Default: the service's setting. */
  wait?: number;
  /** Compare-and-set: the version this change is based on. */
  ifMatch?: number;
}

export interface RequestOptions {
  /** Sent as JSON, as application/json unless `headers` names another content-type. */
  body?: unknown;
  /**
   * Sent as it is, with the content-type of `headers` if any: a body
   * serialized ahead of time (benchmarks), or one the API must refuse (tests).
   */
  rawBody?: string;
  query?: Record<string, string | number | undefined>;
  /** Lower-case names; these win over the client's own. */
  headers?: Record<string, string>;
  /** This request's key instead of the client's; '' sends no Authorization header. */
  apiKey?: string;
}

export interface ClientOptions {
  /** For example http://127.0.0.1:8080 (without /api/v1). */
  baseUrl: string;
  apiKey: string;
  /** @default globalThis.fetch */
  fetch?: typeof fetch;
  /**
   * Retries of an idempotent request (GET, PUT, DELETE) that got 503 or no
   * answer at all, waiting Retry-After (at most 1 s) or 200 ms between tries.
   * @default 0
   */
  retries?: number;
}

export class ApiClientError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details?: Array<{ path: string; message: string }>,
  ) {
    super(message);
    this.name = 'ApiClientError';
  }
}

/**
 * No answer at all: the API could not be reached (or the connection broke
 * before it answered). `code` is the system error (ECONNREFUSED, EPERM,
 * ENOTFOUND, ETIMEDOUT, ...) when there is one.
 */
export class ApiUnreachableError extends Error {
  constructor(
    readonly url: string,
    readonly code: string,
    options: { cause: unknown },
  ) {
    super(`cannot reach the API at ${url}${code ? ` (${code})` : ''}`, options);
    this.name = 'ApiUnreachableError';
  }
}

/** The system error code under a fetch failure (undici wraps it in `cause`; happy eyeballs in an AggregateError). */
function systemCode(err: unknown, depth = 0): string {
  if (typeof err !== 'object' || err === null || depth > 5) return '';
  const e = err as { code?: unknown; cause?: unknown; errors?: unknown[] };
  if (typeof e.code === 'string' && /^E[A-Z]+$/.test(e.code)) return e.code;
  return systemCode(e.cause, depth + 1) || systemCode(e.errors?.[0], depth + 1);
}

export class Client {
  readonly networkPolicy: NetworkPolicyApi;
  readonly computers: ComputersApi;
  readonly keys: KeysApi;
  readonly store: StoreApi;
  private readonly baseUrl: string;
  private readonly apiKey: string;
  private readonly fetchFn: typeof fetch;
  private readonly retries: number;

  constructor(options: ClientOptions) {
    this.baseUrl = options.baseUrl.replace(/\/+$/, '');
    this.apiKey = options.apiKey;
    this.fetchFn = options.fetch ?? globalThis.fetch;
    this.retries = options.retries ?? 0;
    this.networkPolicy = new NetworkPolicyApi(this);
    this.computers = new ComputersApi(this);
    this.keys = new KeysApi(this);
    this.store = new StoreApi(this);
  }

  /** What the service does by default for this key: its default node, where its computers may live. */
  async service(): Promise<ServiceView> {
    return (await this.request<{ data: ServiceView }>('GET', '/api/v1/service')).body.data;
  }

  /** One request; resolves to the parsed body (undefined for 204), throws ApiClientError otherwise. */
  async request<T>(
    method: string,
    path: string,
    options: RequestOptions = {},
  ): Promise<{ status: number; body: T }> {
    const reply = await this.send(method, path, options);
    if (reply.status < 200 || reply.status > 299) {
      const err = (reply.body as { error?: { code?: string; message?: string; details?: [] } } | undefined)
        ?.error;
      throw new ApiClientError(
        reply.status,
        err?.code ?? 'http_error',
        err?.message ?? `HTTP ${reply.status}: ${reply.text.slice(0, 200)}`,
        err?.details,
      );
    }
    return { status: reply.status, body: reply.body as T };
  }

  /**
   * One request, answered whatever its status (tests look at 4xx and 5xx
   * answers and their headers); throws ApiUnreachableError only when no
   * answer came.
   */
  async send(method: string, path: string, options: RequestOptions = {}): Promise<Reply> {
    const url = new URL(this.baseUrl + path);
    for (const [name, value] of Object.entries(options.query ?? {})) {
      if (value !== undefined) url.searchParams.set(name, String(value));
    }
    const headers: Record<string, string> = {
      ...(options.apiKey === '' ? {} : { authorization: `Bearer ${options.apiKey ?? this.apiKey}` }),
      ...options.headers,
    };
    const init: RequestInit = { method, headers };
    if (options.rawBody !== undefined) {
      init.body = options.rawBody;
    } else if (options.body !== undefined) {
      headers['content-type'] ??= 'application/json';
      init.body = JSON.stringify(options.body);
    }
    const idempotent = method !== 'POST';
    let res: Response | undefined;
    let sentAt = 0n;
    for (let attempt = 0; ; attempt++) {
      const last = !idempotent || attempt >= this.retries;
      sentAt = process.hrtime.bigint();
      try {
        res = await this.fetchFn(url, init);
      } catch (err) {
        if (last)
          throw new ApiUnreachableError(`${url.origin}${url.pathname}`, systemCode(err), { cause: err });
        await delay(200);
        continue;
      }
      if (res.status !== 503 || last) break;
      await res.body?.cancel();
      const after = Number(res.headers.get('retry-after'));
      await delay(Number.isFinite(after) && after > 0 ? Math.min(after * 1000, 1000) : 200);
    }
    const headersAt = process.hrtime.bigint();
    return new Reply(res.status, res.headers, await res.text(), sentAt, headersAt);
  }
}

/** An answer as it came. */
export class Reply {
  private parsed?: { value: unknown };
  constructor(
    readonly status: number,
    readonly headers: Headers,
    readonly text: string,
    /** process.hrtime.bigint() when the request (its last try) was handed to fetch. */
    readonly sentAt: bigint,
    /** process.hrtime.bigint() when its status and headers were in. */
    readonly headersAt: bigint,
  ) {}

  /** The JSON body, undefined when empty or not JSON; parsed on first use (benchmarks time megabyte answers). */
  get body(): unknown {
    if (!this.parsed) {
      let value: unknown;
      try {
        value = this.text === '' ? undefined : JSON.parse(this.text);
      } catch {
        value = undefined;
      }
      this.parsed = { value };
    }
    return this.parsed.value;
  }
}

const enc = encodeURIComponent;

export class NetworkPolicyApi {
  constructor(private readonly client: Client) {}

  async get(computerId: string): Promise<PolicyView> {
    return (
      await this.client.request<{ data: PolicyView }>(
        'GET',
        `/api/v1/computers/${enc(computerId)}/network-policy`,
      )
    ).body.data;
  }

  /** Replaces the policy. The result's `enforcement.state` says whether the agent enforced it in time. */
  async update(computerId: string, policy: PolicyInput, options: ChangeOptions = {}): Promise<PolicyView> {
    return (
      await this.client.request<{ data: PolicyView }>(
        'PUT',
        `/api/v1/computers/${enc(computerId)}/network-policy`,
        {
          body: policy,
          query: { wait: options.wait },
          headers: ifMatch(options),
        },
      )
    ).body.data;
  }

  /** The computer's deny events, newest first. */
  async events(
    computerId: string,
    options: { limit?: number; since?: string } = {},
  ): Promise<Record<string, unknown>[]> {
    return (
      await this.client.request<{ data: Record<string, unknown>[] }>(
        'GET',
        `/api/v1/computers/${enc(computerId)}/network-policy/events`,
        { query: { limit: options.limit, since: options.since } },
      )
    ).body.data;
  }

  /** Hostname → address pairs that the computer's DNS lookups taught it. */
  async learned(computerId: string): Promise<{ name: string; address: string; expires_at: string }[]> {
    return (
      await this.client.request<{ data: { name: string; address: string; expires_at: string }[] }>(
        'GET',
        `/api/v1/computers/${enc(computerId)}/network-policy/learned`,
      )
    ).body.data;
  }

  /**
   * The suggested allowlist: what the computer was seen connecting to (last seen at or after
   * `since`, RFC 3339) as a policy body; `update(id, suggestion.policy)` applies it.
   */
  async suggestion(computerId: string, options: { since?: string } = {}): Promise<SuggestionView> {
    return (
      await this.client.request<{ data: SuggestionView }>(
        'GET',
        `/api/v1/computers/${enc(computerId)}/network-policy/suggestion`,
        { query: { since: options.since } },
      )
    ).body.data;
  }

  /** Resets to unrestricted (idempotent). */
  async delete(computerId: string, options: ChangeOptions = {}): Promise<PolicyView> {
    return (
      await this.client.request<{ data: PolicyView }>(
        'DELETE',
        `/api/v1/computers/${enc(computerId)}/network-policy`,
        {
          query: { wait: options.wait },
          headers: ifMatch(options),
        },
      )
    ).body.data;
  }
}

export class ComputersApi {
  constructor(private readonly client: Client) {}

  async get(id: string): Promise<ComputerView> {
    return (await this.client.request<{ data: ComputerView }>('GET', `/api/v1/computers/${enc(id)}`)).body
      .data;
  }

  /** Registers (created: true) or updates a computer. */
  async put(
    id: string,
    computer: { cgroup: string; node?: string; tenant?: string | null; dns_upstream?: string | null },
  ): Promise<ComputerView & { created: boolean }> {
    const r = await this.client.request<{ data: ComputerView }>('PUT', `/api/v1/computers/${enc(id)}`, {
      body: computer,
    });
    return { ...r.body.data, created: r.status === 201 };
  }

  /** One page; pass `next_cursor` back as `cursor` until it is null. */
  async list(
    options: { node?: string; limit?: number; cursor?: string } = {},
  ): Promise<{ data: ComputerListItemView[]; next_cursor: string | null }> {
    return (
      await this.client.request<{ data: ComputerListItemView[]; next_cursor: string | null }>(
        'GET',
        '/api/v1/computers',
        {
          query: { node: options.node, limit: options.limit, cursor: options.cursor },
        },
      )
    ).body;
  }

  /** Every computer (following the pages). */
  async *all(options: { node?: string } = {}): AsyncGenerator<ComputerListItemView> {
    let cursor: string | undefined;
    do {
      const page = await this.list({ ...options, ...(cursor === undefined ? {} : { cursor }) });
      yield* page.data;
      cursor = page.next_cursor ?? undefined;
    } while (cursor !== undefined);
  }

  async delete(id: string): Promise<void> {
    await this.client.request('DELETE', `/api/v1/computers/${enc(id)}`);
  }
}

export class KeysApi {
  constructor(private readonly client: Client) {}

  /** Creates a tenant key (admin only). `key` is returned only here. */
  async create(input: {
    tenant: string;
    name?: string;
    cgroup_prefix?: string;
  }): Promise<ApiKeyView & { key: string }> {
    return (
      await this.client.request<{ data: ApiKeyView & { key: string } }>('POST', '/api/v1/keys', {
        body: input,
      })
    ).body.data;
  }

  async list(): Promise<ApiKeyView[]> {
    return (await this.client.request<{ data: ApiKeyView[] }>('GET', '/api/v1/keys')).body.data;
  }

  async delete(id: string): Promise<void> {
    await this.client.request('DELETE', `/api/v1/keys/${enc(id)}`);
  }
}

function ifMatch(options: ChangeOptions): Record<string, string> {
  return options.ifMatch === undefined ? {} : { 'if-match': `"${options.ifMatch}"` };
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
