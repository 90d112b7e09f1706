/**
 * The store: every read and write of egressd's state in Redis, for the API
 * and for the agent. Changes run as Lua scripts (scripts.ts), atomically.
 *
 * Redis being unreachable surfaces as StoreUnavailableError at once (no
 * offline queue, one retry at most, a command timeout), and the client keeps
 * reconnecting in the background, so service resumes when Redis is back.
 *
 * A change that was sent but got no answer (timed out, or the connection was
 * lost before the reply) surfaces as StoreOutcomeUnknownError instead: Redis
 * may have applied it. Such a command is never sent again by the client
 * library after a reconnect (`autoResendUnfulfilledCommands: false`), so once
 * Redis answers again a read tells the outcome for good (a frozen Redis may
 * still run what it had received when it resumes: that is what it answers to
 * the next read too).
 */
import { createHash } from 'node:crypto';
import { Redis, type RedisOptions } from 'ioredis';
import { DNS_MODES, type DnsMode, defaultDns, type Mode, type Policy, type Rule } from '../policy/types.js';
import { StoreOutcomeUnknownError, StoreUnavailableError } from './errors.js';
import { EventFeed } from './event-feed.js';
import { channels, keys, templates } from './keys.js';
import {
  ACK_ENFORCED,
  APPEND_EVENTS,
  DELETE_COMPUTER,
  GET_POLICY,
  NODE_SNAPSHOT,
  PUT_COMPUTER,
  PUT_LEARNED,
  PUT_POLICY,
} from './scripts.js';

export interface StoreOptions {
  /** Redis URL: `redis://host:port/db` or `unix:///path/to/socket`. */
  url: string;
  /**
   * Approximate cap of each node's change stream (XADD MAXLEN ~).
   * @default 10000
   */
  streamMaxLen?: number;
  /**
   * Milliseconds before a command that got no answer fails.
   * @default 2000
   */
  commandTimeoutMs?: number;
  /**
   * How often a waiter re-reads the acknowledgement even without a
   * notification (a safety net for a lost pub/sub message; after the
   * subscriber reconnects every waiter reads at once), in milliseconds.
   * @default 2000
   */
  waitPollMs?: number;
}

/**
 * What the agent reports of a computer's policy (`enforced` hash):
 * - `enforced`: in force;
 * - `dns_ports_exhausted`: in force with DNS refused (no proxy port was free);
 * - `cgroup_missing`: the cgroup does not exist (yet, or any more): nothing attached;
 * - `cgroup_forbidden`: the agent refuses to attach to that cgroup (its own,
 *   an ancestor of its own or of Redis's, or outside its sandbox roots).
 */
export const AGENT_STATES = [
  'enforced',
  'dns_ports_exhausted',
  'cgroup_missing',
  'cgroup_forbidden',
] as const;
export type AgentState = (typeof AGENT_STATES)[number];

/** States in which the policy is in force in the kernel (at least as strictly as asked). */
export function inForce(state: AgentState): boolean {
  return state === 'enforced' || state === 'dns_ports_exhausted';
}

/** The agent's acknowledgement: the version it reports on, since when, its state, and why (when not enforced). */
export interface Enforced {
  version: number;
  at: string;
  state: AgentState;
  /** What the agent found (the cgroup path it looked for, why it refuses it); '' when there is nothing to say. */
  reason: string;
}

export interface PolicyRecord extends Policy {
  computerId: string;
  /** Always present in what the store reads (a policy stored before it existed reads as the default). */
  dns: DnsMode;
  /** `rules` as stored (JSON), so that a reply can carry them without parsing and serialising again. */
  rulesJson: string;
  version: number;
  updatedAt: string;
  enforced: Enforced | undefined;
}

export interface Computer {
  id: string;
  /** Path relative to the cgroup2 mount, without leading or trailing '/'. */
  cgroup: string;
  node: string;
  tenant: string | null;
  /** The resolver the DNS proxy forwards the computer's queries to ("addr:port", "[v6]:port"); null: the agent's default. */
  dnsUpstream: string | null;
  createdAt: string;
  updatedAt: string;
}

export type ChangeKind = 'policy' | 'computer' | 'computer-deleted';

/** One entry of a node's change stream (`keys.nodeChanges(node)`). */
export interface ChangeRecord {
  /** Stream entry id; read on from here. */
  streamId: string;
  computerId: string;
  kind: ChangeKind;
  version: number;
  cgroup: string;
  at: string;
  /** Per-node sequence number: consecutive unless records were trimmed before they were read. */
  seq: number;
}

/** A node's full state, for an agent's resync: follow the stream from `streamId`. */
export interface NodeSnapshot {
  streamId: string;
  /** `seq` of the record at streamId: the next record to read has seq + 1. */
  seq: number;
  computers: Array<{
    id: string;
    cgroup: string;
    tenant: string | null;
    dnsUpstream: string | null;
    policy: Policy & { dns: DnsMode };
    version: number;
    updatedAt: string;
  }>;
}

export interface ApiKeyRecord {
  id: string;
  tenant: string;
  /** The cgroup subtree (relative to the mount) the key's computers must lie below; '' for a key made before prefixes. */
  cgroupPrefix: string;
  name: string | null;
  createdAt: string;
  /** sha256 hex of the whole key. */
  hash: string;
}

/** '' scope means every tenant (the admin); otherwise only that tenant's computers. */
export type Scope = string;

export type PutPolicyResult =
  | { status: 'ok' | 'unchanged'; record: PolicyRecord }
  | { status: 'not_found' }
  | { status: 'precondition_failed'; version: number };

export type PutComputerResult =
  | { status: 'created' | 'updated' | 'unchanged'; computer: Computer }
  | { status: 'not_found' | 'node_required' }
  | { status: 'cgroup_in_use' | 'cgroup_nested'; owner: string };

interface Script {
  source: string;
  sha: string;
}

function script(source: string): Script {
  return { source, sha: createHash('sha1').update(source).digest('hex') };
}

const SCRIPTS = {
  getPolicy: script(GET_POLICY),
  putPolicy: script(PUT_POLICY),
  putComputer: script(PUT_COMPUTER),
  deleteComputer: script(DELETE_COMPUTER),
  ackEnforced: script(ACK_ENFORCED),
  nodeSnapshot: script(NODE_SNAPSHOT),
  appendEvents: script(APPEND_EVENTS),
  putLearned: script(PUT_LEARNED),
};

/** Approximate cap of each computer's deny event stream. */
const EVENTS_MAXLEN = '1000';

/** Reply errors that mean "not now" rather than "bug". Either way Redis refused the command: nothing changed. */
const TRANSIENT_REPLY = /^(LOADING|BUSY|MASTERDOWN|READONLY|CLUSTERDOWN|TRYAGAIN|NOREPLICAS)\b/;

/**
 * ioredis's words for a command it refused to write (no connection, and no
 * offline queue): it never reached Redis. Any other failure of a change that
 * was handed to a ready connection may have reached it.
 */
const NOT_SENT = /^Stream isn't writeable/;

/**
 * A change the store makes, for the error when its outcome is unknown: what
 * was being changed, and how a caller finds out (and what is safe to repeat).
 */
interface Change {
  what: string;
  advice: string;
}

export function redisOptions(url: string, commandTimeoutMs: number): RedisOptions & { path?: string } {
  const common: RedisOptions = {
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    commandTimeout: commandTimeoutMs,
    connectTimeout: 2000,
    enableAutoPipelining: true,
    // Keep trying for ever, at most a second apart.
    retryStrategy: (times) => Math.min(times * 50, 1000),
    lazyConnect: true,
  };
  if (url.startsWith('unix://')) return { ...common, path: url.slice('unix://'.length) };
  const u = new URL(url);
  return {
    ...common,
    host: u.hostname.replace(/^\[|\]$/g, '') || '127.0.0.1',
    port: u.port === '' ? 6379 : Number(u.port),
    db: u.pathname.length > 1 ? Number(u.pathname.slice(1)) : 0,
    ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
    ...(u.username ? { username: decodeURIComponent(u.username) } : {}),
  };
}

/**
 * The `mode` field of a policy stored before `dns` existed, for an isolated
 * policy with `block_dns` (the option then had no field of its own). Read as
 * isolated with `dns` "none"; never written any more.
 */
const LEGACY_BLOCK_DNS_MODE = 'isolated+block_dns';

export class Store {
  readonly redis: Redis;
  private subscriber: Redis | undefined;
  private subscribed: Promise<unknown> | undefined;
  private blocking: Redis | undefined;
  private readonly streamMaxLen: string;
  private readonly waitPollMs: number;
  private readonly options: StoreOptions;
  /** Per computer id, the wake-up functions of the requests waiting for its acknowledgement. */
  private readonly waiters = new Map<string, Set<(ack?: Enforced) => void>>();
  /** Told the id of each revoked API key; undefined after the subscriber reconnects (notices may be lost). */
  private readonly revocationListeners = new Set<(keyId?: string) => void>();
  private feed: EventFeed | undefined;

  constructor(options: StoreOptions) {
    this.options = options;
    // Connects at once (a Store that nobody connect()s still comes up); connect() waits for it.
    this.redis = new Redis({
      ...redisOptions(options.url, options.commandTimeoutMs ?? 2000),
      lazyConnect: false,
      // A command in flight when the connection dropped is not sent again after the reconnect:
      // its caller was told the outcome is unknown, and a write applied minutes later could
      // undo a newer one. Every command of this connection has a timeout, which ends its wait.
      autoResendUnfulfilledCommands: false,
    });
    // Errors surface on commands; without a listener ioredis would log each reconnect failure.
    this.redis.on('error', () => {});
    this.streamMaxLen = String(options.streamMaxLen ?? 10_000);
    this.waitPollMs = options.waitPollMs ?? 2000;
  }

  /**
   * Connects, and subscribes to acknowledgements. Rejects if Redis cannot be
   * reached now; the clients keep reconnecting in the background all the
   * same (a server may start before Redis and answer 503 until it is up).
   */
  async connect(): Promise<void> {
    const subscribed = this.subscribe();
    const redis = this.redis;
    if (redis.status === 'wait') await redis.connect();
    else if (redis.status !== 'ready') {
      await new Promise<void>((resolve, reject) => {
        const done = (err?: Error) => {
          redis.off('ready', onReady);
          redis.off('error', onError);
          redis.off('end', onEnd);
          if (err) reject(err);
          else resolve();
        };
        const onReady = () => done();
        const onError = (err: Error) => done(err);
        const onEnd = () => done(new Error('Connection is closed.'));
        redis.on('ready', onReady);
        redis.on('error', onError);
        redis.on('end', onEnd);
      });
    }
    await subscribed;
  }

  private subscribe(): Promise<unknown> {
    if (this.subscribed) return this.subscribed;
    const sub = new Redis({
      ...redisOptions(this.options.url, this.options.commandTimeoutMs ?? 2000),
      // Subscriptions are not request-bound: queue them until connected, and resubscribe after reconnects.
      enableOfflineQueue: true,
      maxRetriesPerRequest: null,
      commandTimeout: undefined,
      enableAutoPipelining: false,
      lazyConnect: false,
    });
    sub.on('error', () => {});
    // Notifications published while the subscriber was away are lost: every waiter reads, and every
    // holder of key-bound state checks its keys.
    sub.on('ready', () => {
      for (const set of this.waiters.values()) for (const wake of set) wake();
      for (const listener of this.revocationListeners) listener();
    });
    sub.on('message', (channel: string, message: string) => {
      if (channel === channels.keyRevoked) {
        for (const listener of this.revocationListeners) listener(message);
        return;
      }
      if (channel === channels.computerDeleted) {
        this.feed?.endComputer(message);
        return;
      }
      const [id = '', version, at, state, ...reason] = message.split(' ');
      // "<id> <version> <at> <state>[ <reason>]"; an older writer's "<id> <version>" makes waiters read the key.
      const ack =
        at !== undefined && Number.isSafeInteger(Number(version))
          ? enforced(version, at, state, reason.join(' '))
          : undefined;
      for (const wake of this.waiters.get(id) ?? []) wake(ack);
    });
    this.subscriber = sub;
    this.subscribed = sub.subscribe(channels.enforced, channels.keyRevoked, channels.computerDeleted);
    return this.subscribed;
  }

  /**
   * Calls `listener` with the id of every API key revoked (by any process),
   * and with no id when notices may have been lost (the subscriber
   * reconnected): then the listener must check its keys itself. Returns the
   * function that removes it. Needs connect().
   */
  onKeyRevoked(listener: (keyId?: string) => void): () => void {
    this.revocationListeners.add(listener);
    return () => this.revocationListeners.delete(listener);
  }

  /**
   * The process's one reader of computers' deny events, for every SSE
   * stream (one connection of its own, opened at the first subscription).
   */
  eventFeed(): EventFeed {
    this.feed ??= new EventFeed({
      connect: () => {
        const client = new Redis({
          ...redisOptions(this.options.url, this.options.commandTimeoutMs ?? 2000),
          lazyConnect: false,
          commandTimeout: undefined,
          enableAutoPipelining: false,
          // A read in flight when the connection drops fails at once (the feed ends its subscribers) ...
          maxRetriesPerRequest: 0,
          // ... and is not sent again after the reconnect.
          autoResendUnfulfilledCommands: false,
        });
        client.on('error', () => {});
        return client;
      },
      unblock: (clientId) => this.redis.client('UNBLOCK', clientId) as Promise<number>,
      cursor: (id) => this.eventsCursor(id),
      streamKey: keys.events,
    });
    return this.feed;
  }

  async close(): Promise<void> {
    this.feed?.close();
    for (const client of [this.redis, this.subscriber, this.blocking]) {
      if (client && client.status !== 'end') client.disconnect();
    }
  }

  /** True if Redis answers PING now. */
  async ping(): Promise<boolean> {
    try {
      return (await this.redis.ping()) === 'PONG';
    } catch {
      return false;
    }
  }

  private async run(
    s: Script,
    keyList: string[],
    args: (string | number)[],
    change?: Change,
  ): Promise<unknown> {
    return this.guard(async () => {
      try {
        return await this.redis.evalsha(s.sha, keyList.length, ...keyList, ...args);
      } catch (err) {
        // NOSCRIPT: Redis ran nothing; the script itself goes along this time.
        if (err instanceof Error && err.message.startsWith('NOSCRIPT')) {
          return await this.redis.eval(s.source, keyList.length, ...keyList, ...args);
        }
        throw err;
      }
    }, change);
  }

  /**
   * Runs `fn`, turning "Redis is not there" into StoreUnavailableError. With
   * `change` (fn writes on the main connection), a failure after the command
   * may have reached Redis is StoreOutcomeUnknownError; a change is not even
   * tried while the connection is not ready (then it surely never reached Redis).
   */
  async guard<T>(fn: () => Promise<T>, change?: Change): Promise<T> {
    if (change && this.redis.status !== 'ready') {
      throw new StoreUnavailableError(new Error(`not connected to Redis (${this.redis.status})`));
    }
    try {
      return await fn();
    } catch (err) {
      if (err instanceof StoreUnavailableError) throw err;
      if (err instanceof Error && err.name === 'ReplyError') {
        // Redis answered: a refusal that means "not now" is a 503 (it changed nothing), any other a bug.
        if (!TRANSIENT_REPLY.test(err.message)) throw err;
        throw new StoreUnavailableError(err);
      }
      if (change && !(err instanceof Error && NOT_SENT.test(err.message))) {
        throw new StoreOutcomeUnknownError(err, change.what, change.advice);
      }
      throw new StoreUnavailableError(err);
    }
  }

  // --- policies -----------------------------------------------------------

  async getPolicy(id: string, scope: Scope = ''): Promise<PolicyRecord | undefined> {
    const r = (await this.run(
      SCRIPTS.getPolicy,
      [keys.computer(id), keys.policy(id), keys.enforced(id)],
      [scope],
    )) as string[];
    if (r[0] !== 'ok') return undefined;
    const [, mode, rulesJson = '[]', version, updatedAt, ackVersion, ackAt, ackState, ackReason, dns] = r;
    // Onto the stored policy, not spread from it: spreading would parse its rules.
    return Object.assign(storedPolicy(mode, rulesJson, dns), {
      computerId: id,
      version: Number(version),
      updatedAt: updatedAt ?? '',
      enforced: enforced(ackVersion, ackAt, ackState, ackReason),
    });
  }

  /**
   * Replaces a computer's policy (normalised already) and appends the change
   * record, atomically. `ifMatch` makes it a compare-and-set on the version.
   */
  async putPolicy(
    id: string,
    policy: Policy,
    options: { scope?: Scope; ifMatch?: number; now?: Date } = {},
  ): Promise<PutPolicyResult> {
    const now = (options.now ?? new Date()).toISOString();
    const rulesJson = JSON.stringify(policy.rules);
    const dns = policy.dns ?? defaultDns(policy.mode, policy.rules);
    const r = (await this.run(
      SCRIPTS.putPolicy,
      [keys.computer(id), keys.policy(id), keys.enforced(id), keys.version()],
      [
        options.scope ?? '',
        id,
        policy.mode,
        rulesJson,
        options.ifMatch === undefined ? '' : String(options.ifMatch),
        now,
        templates.nodeChanges,
        this.streamMaxLen,
        dns,
      ],
      {
        what: `the change to the policy of computer "${id}"`,
        advice:
          `GET /api/v1/computers/${id}/network-policy once the store answers to see which. ` +
          'Repeating the same PUT (or DELETE) is safe: it leaves the same policy stored, under one version.',
      },
    )) as string[];
    const status = r[0];
    if (status === 'not_found') return { status };
    if (status === 'precondition_failed') return { status, version: Number(r[1]) };
    const [, version, updatedAt, ackVersion, ackAt, ackState, ackReason] = r;
    return {
      status: status === 'unchanged' ? 'unchanged' : 'ok',
      record: {
        computerId: id,
        mode: policy.mode,
        dns,
        rules: policy.rules,
        rulesJson,
        version: Number(version),
        updatedAt: updatedAt ?? now,
        enforced: enforced(ackVersion, ackAt, ackState, ackReason),
      },
    };
  }

  /**
   * Appends deny events (JSON-ready objects) to the computer's capped stream
   * (about the last 1,000), if the computer exists: the agent flushes what
   * it buffered, and a flush after the DELETE must not bring the stream back
   * for whoever registers the id next. (A flush that lands after the id was
   * registered again, within the agent's 250 ms batching, still does: the
   * script cannot tell one computer of an id from the next. Accepted: it takes
   * a delete and a register within the same fraction of a second.)
   */
  async appendEvents(id: string, events: object[]): Promise<void> {
    if (events.length === 0) return;
    await this.run(
      SCRIPTS.appendEvents,
      [keys.computer(id), keys.events(id)],
      [EVENTS_MAXLEN, ...events.map((e) => JSON.stringify(e))],
    );
  }

  /** The id of a computer's newest event ('0-0' when none): follow from here to see only new ones. */
  async eventsCursor(id: string): Promise<string> {
    const last = await this.guard(() => this.redis.xrevrange(keys.events(id), '+', '-', 'COUNT', 1));
    return last[0]?.[0] ?? '0-0';
  }

  /** A computer's deny events, newest first, visible under `scope`; undefined when the computer is not. */
  async getEvents(id: string, scope: Scope, limit: number, sinceMs = 0): Promise<unknown[] | undefined> {
    const [tenant, entries] = await this.guard(() =>
      Promise.all([
        this.redis.hget(keys.computer(id), 'tenant'),
        this.redis.xrevrange(keys.events(id), '+', sinceMs > 0 ? String(sinceMs) : '-', 'COUNT', limit),
      ]),
    );
    if (tenant === null || (scope !== '' && tenant !== scope)) return undefined;
    return entries.map(([, fields]) => JSON.parse(fields[1] ?? '{}'));
  }

  /**
   * The agent records what the computer's DNS lookups taught it (hostname →
   * address, until when), if the computer exists (as appendEvents: the agent
   * publishes within half a second, which may be after a DELETE); expired
   * fields are dropped as new ones come, and the key itself expires with its
   * last field.
   */
  async putLearned(
    id: string,
    entries: { name: string; address: string; expiresAt: number }[],
  ): Promise<void> {
    if (entries.length === 0) return;
    const fields: string[] = [];
    for (const e of entries) fields.push(`${e.name} ${e.address}`, String(e.expiresAt));
    await this.run(
      SCRIPTS.putLearned,
      [keys.computer(id), keys.learned(id)],
      [String(Date.now()), ...fields],
    );
  }

  /** Unexpired learned hostnames of a computer visible under `scope`; undefined when the computer is not. */
  async getLearned(
    id: string,
    scope: Scope = '',
  ): Promise<{ name: string; address: string; expiresAt: number }[] | undefined> {
    const [computer, fields] = await this.guard(() =>
      Promise.all([this.redis.hget(keys.computer(id), 'tenant'), this.redis.hgetall(keys.learned(id))]),
    );
    if (computer === null || (scope !== '' && computer !== scope)) return undefined;
    const now = Date.now();
    return Object.entries(fields)
      .map(([field, at]) => {
        const space = field.indexOf(' ');
        return { name: field.slice(0, space), address: field.slice(space + 1), expiresAt: Number(at) };
      })
      .filter((e) => e.expiresAt > now)
      .sort((a, b) => a.name.localeCompare(b.name) || a.address.localeCompare(b.address));
  }

  /** The agent's acknowledgement for a computer, if any. */
  async getEnforced(id: string): Promise<Enforced | undefined> {
    const [version, at, state, reason] = await this.guard(() =>
      this.redis.hmget(keys.enforced(id), 'version', 'at', 'state', 'reason'),
    );
    return enforced(version ?? undefined, at ?? undefined, state ?? undefined, reason ?? undefined);
  }

  /**
   * Waits until the agent reports on `version` (or a later one) of the
   * computer's policy, or `timeoutMs` passes; returns the last report seen.
   * Any report settles it (a PUT answers at once that the cgroup is missing),
   * unless `pastMissing`: then `cgroup_missing` is waited past, for a caller
   * that knows the cgroup is about to appear.
   * Registers for the notification first, then reads, so none is lost.
   */
  async waitEnforced(
    id: string,
    version: number,
    timeoutMs: number,
    options: { pastMissing?: boolean } = {},
  ): Promise<Enforced | undefined> {
    const deadline = Date.now() + timeoutMs;
    const settled = (a: Enforced | undefined): a is Enforced =>
      a !== undefined && a.version >= version && !(options.pastMissing && a.state === 'cgroup_missing');
    let notified = false;
    let wakeNow: (() => void) | undefined;
    /** The newest report of `version` or later that a notification carried. */
    let pushed: Enforced | undefined;
    const wake = (ack?: Enforced) => {
      if (ack !== undefined) {
        if (ack.version < version) return; // an earlier version: nothing to read
        pushed = ack;
      }
      notified = true;
      wakeNow?.();
    };
    let set = this.waiters.get(id);
    if (!set) {
      set = new Set();
      this.waiters.set(id, set);
    }
    set.add(wake);
    let last: Enforced | undefined;
    try {
      for (;;) {
        notified = false;
        if (settled(pushed)) return pushed;
        try {
          last = await this.getEnforced(id);
        } catch {
          // Redis went away mid-wait: answer with what we know.
          return pushed ?? last;
        }
        if (settled(last)) return last;
        if (settled(pushed)) return pushed;
        const left = deadline - Date.now();
        if (left <= 0) return pushed ?? last;
        if (notified) continue;
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, Math.min(left, this.waitPollMs));
          wakeNow = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        wakeNow = undefined;
      }
    } finally {
      set.delete(wake);
      if (set.size === 0) this.waiters.delete(id);
    }
  }

  /**
   * The agent's report on `version` of the computer's policy since `at`: its
   * state, and why when it is not enforced (`reason`, one line). Never moves
   * back; wakes waiting API requests.
   */
  async ackEnforced(
    id: string,
    version: number,
    at: Date = new Date(),
    node = '',
    state: AgentState = 'enforced',
    reason = '',
  ): Promise<boolean> {
    const r = await this.run(
      SCRIPTS.ackEnforced,
      [keys.computer(id), keys.enforced(id)],
      [id, String(version), at.toISOString(), node, channels.enforced, state, reason.replace(/\s+/g, ' ')],
    );
    return r === 1;
  }

  // --- computers ----------------------------------------------------------

  async getComputer(id: string, scope: Scope = ''): Promise<Computer | undefined> {
    const h = await this.guard(() => this.redis.hgetall(keys.computer(id)));
    const computer = toComputer(h);
    if (!computer || (scope !== '' && computer.tenant !== scope)) return undefined;
    return computer;
  }

  /**
   * Registers or updates a computer. `node` absent keeps the current node
   * (or takes `defaultNode` for a new computer); `tenant` absent keeps the
   * current tenant (none for a new computer), null sets none; so does
   * `dnsUpstream` (stored form: validation.ts normaliseDnsUpstream). A
   * change of it alone appends a change record with the policy's current
   * version, so that the agent re-reads the computer (no new version).
   */
  async putComputer(
    id: string,
    input: {
      cgroup: string;
      node?: string | undefined;
      tenant?: string | null | undefined;
      dnsUpstream?: string | null | undefined;
    },
    options: { scope?: Scope; defaultNode?: string; now?: Date } = {},
  ): Promise<PutComputerResult> {
    const now = (options.now ?? new Date()).toISOString();
    const r = (await this.run(
      SCRIPTS.putComputer,
      computerScriptKeys(id),
      [
        options.scope ?? '',
        id,
        input.cgroup,
        input.node ?? '',
        options.defaultNode ?? '',
        input.tenant ?? '',
        input.tenant === undefined ? '0' : '1',
        now,
        templates.nodeComputers,
        templates.nodeCgroups,
        templates.nodeChanges,
        templates.tenantComputers,
        this.streamMaxLen,
        templates.nodeCgroupPaths,
        input.dnsUpstream ?? '',
        input.dnsUpstream === undefined ? '0' : '1',
      ],
      {
        what: `the registration of computer "${id}"`,
        advice:
          `GET /api/v1/computers/${id} once the store answers to see which. ` +
          'Repeating the same PUT is safe (it answers 200 with the computer as stored).',
      },
    )) as string[];
    const status = r[0];
    if (status === 'not_found' || status === 'node_required') return { status };
    if (status === 'cgroup_in_use' || status === 'cgroup_nested') return { status, owner: r[1] ?? '' };
    const [, cgroup = '', node = '', tenant = '', createdAt = '', updatedAt = '', dnsUpstream = ''] = r;
    return {
      status: status as 'created' | 'updated' | 'unchanged',
      computer: {
        id,
        cgroup,
        node,
        tenant: tenant === '' ? null : tenant,
        dnsUpstream: dnsUpstream === '' ? null : dnsUpstream,
        createdAt,
        updatedAt,
      },
    };
  }

  /**
   * Removes a computer with everything that belongs to it (policy,
   * acknowledgement, deny events, learned names); false if there is none (in scope).
   */
  async deleteComputer(id: string, scope: Scope = '', now: Date = new Date()): Promise<boolean> {
    const r = (await this.run(
      SCRIPTS.deleteComputer,
      computerScriptKeys(id),
      [
        scope,
        id,
        now.toISOString(),
        templates.nodeComputers,
        templates.nodeCgroups,
        templates.nodeChanges,
        templates.tenantComputers,
        this.streamMaxLen,
        templates.nodeCgroupPaths,
        channels.computerDeleted,
      ],
      {
        what: `the deletion of computer "${id}"`,
        advice:
          `GET /api/v1/computers/${id} once the store answers to see which (404: it is gone). ` +
          'Repeating the DELETE is safe (404 computer_not_found then means it is gone).',
      },
    )) as string[];
    return r[0] === 'ok';
  }

  /**
   * One page of computers ordered by id, after `cursor` (an id, exclusive).
   * With both a scope and a node, a page may hold fewer than `limit`
   * computers while `nextCursor` is set: follow it until it is null.
   */
  async listComputers(options: {
    scope?: Scope;
    node?: string;
    cursor?: string;
    limit: number;
  }): Promise<{ computers: Computer[]; nextCursor: string | null }> {
    const scope = options.scope ?? '';
    const index =
      scope !== ''
        ? keys.tenantComputers(scope)
        : options.node !== undefined
          ? keys.nodeComputers(options.node)
          : keys.computers();
    const start = options.cursor ? `(${options.cursor}` : '-';
    const ids = await this.guard(() =>
      this.redis.zrangebylex(index, start, '+', 'LIMIT', 0, options.limit + 1),
    );
    const more = ids.length > options.limit;
    const page = ids.slice(0, options.limit);
    const hashes = await this.guard(() =>
      Promise.all(page.map((id) => this.redis.hgetall(keys.computer(id)))),
    );
    const computers: Computer[] = [];
    for (const h of hashes) {
      const c = toComputer(h);
      if (!c) continue;
      if (scope !== '' && c.tenant !== scope) continue;
      if (options.node !== undefined && c.node !== options.node) continue;
      computers.push(c);
    }
    return { computers, nextCursor: more ? (page[page.length - 1] ?? null) : null };
  }

  /**
   * Each computer's policy mode and version with the agent's report on it
   * (for lists: two HMGETs a computer, pipelined); a computer gone meanwhile
   * reads as unrestricted, version 0.
   */
  async policyStatuses(
    ids: string[],
  ): Promise<Map<string, { mode: Mode; blockDns?: true; version: number; enforced: Enforced | undefined }>> {
    const rows = await this.guard(() =>
      Promise.all(
        ids.map((id) =>
          Promise.all([
            this.redis.hmget(keys.policy(id), 'mode', 'version', 'dns'),
            this.redis.hmget(keys.enforced(id), 'version', 'at', 'state', 'reason'),
          ]),
        ),
      ),
    );
    // A policy stored before `dns` existed: its default depends on its rules (allowlist only).
    const legacy = ids.filter((_, i) => {
      const [mode, , dns] = rows[i]?.[0] ?? [];
      return mode === 'allowlist' && !dns;
    });
    const legacyRules = new Map(
      await this.guard(() =>
        Promise.all(
          legacy.map(async (id) => [id, (await this.redis.hget(keys.policy(id), 'rules')) ?? '[]'] as const),
        ),
      ),
    );
    const out = new Map<
      string,
      { mode: Mode; blockDns?: true; version: number; enforced: Enforced | undefined }
    >();
    rows.forEach(([[mode, version, dns], [ackVersion, at, state, reason]], i) => {
      const id = ids[i] ?? '';
      const policy = storedPolicy(mode ?? undefined, legacyRules.get(id) ?? '[]', dns ?? undefined);
      out.set(id, {
        mode: policy.mode,
        ...(policy.dns === 'none' ? { blockDns: true as const } : {}),
        version: Number(version ?? 0),
        enforced: enforced(ackVersion ?? undefined, at ?? undefined, state ?? undefined, reason ?? undefined),
      });
    });
    return out;
  }

  // --- for the agent ------------------------------------------------------

  /** Every computer of a node with its policy and version, and the stream id to follow on from. */
  async listComputersOfNode(node: string): Promise<NodeSnapshot> {
    const r = (await this.run(
      SCRIPTS.nodeSnapshot,
      [keys.nodeComputers(node), keys.nodeChanges(node)],
      [templates.computer, templates.policy],
    )) as string[];
    const computers: NodeSnapshot['computers'] = [];
    for (let i = 2; i + 9 <= r.length; i += 9) {
      const [
        id = '',
        cgroup = '',
        tenant = '',
        mode = 'unrestricted',
        rules = '[]',
        version = '0',
        updatedAt = '',
        dns = '',
        dnsUpstream = '',
      ] = r.slice(i, i + 9);
      computers.push({
        id,
        cgroup,
        tenant: tenant === '' ? null : tenant,
        dnsUpstream: dnsUpstream === '' ? null : dnsUpstream,
        policy: storedPolicy(mode, rules, dns),
        version: Number(version),
        updatedAt,
      });
    }
    return { streamId: r[0] ?? '0-0', seq: Number(r[1] ?? 0), computers };
  }

  /**
   * Change records of a node after `fromId` (exclusive; '0-0' for all that
   * the stream still holds). With `blockMs`, waits that long for new ones
   * (on a connection of its own). An agent whose `fromId` is older than the
   * stream's first entry has missed records (MAXLEN trimming): it must
   * resync with listComputersOfNode.
   */
  async readChanges(node: string, fromId: string, options: { count?: number; blockMs?: number } = {}) {
    const count = options.count ?? 1000;
    const stream = keys.nodeChanges(node);
    let reply: [string, [string, string[]][]][] | null;
    if (options.blockMs !== undefined) {
      if (!this.blocking) {
        this.blocking = new Redis({
          ...redisOptions(this.options.url, this.options.commandTimeoutMs ?? 2000),
          commandTimeout: undefined,
          enableAutoPipelining: false,
        });
        this.blocking.on('error', () => {});
        await this.guard(() => this.blocking!.connect());
      }
      const client = this.blocking;
      reply = (await this.guard(() =>
        client.xread('COUNT', count, 'BLOCK', options.blockMs!, 'STREAMS', stream, fromId),
      )) as typeof reply;
    } else {
      reply = (await this.guard(() =>
        this.redis.xread('COUNT', count, 'STREAMS', stream, fromId),
      )) as typeof reply;
    }
    const entries = reply?.[0]?.[1] ?? [];
    return entries.map(([streamId, fields]) => toChange(streamId, fields));
  }

  /** The first id still in a node's stream ('0-0' if empty): older positions have been trimmed. */
  async firstChangeId(node: string): Promise<string> {
    const r = await this.guard(() => this.redis.xrange(keys.nodeChanges(node), '-', '+', 'COUNT', 1));
    return r[0]?.[0] ?? '0-0';
  }

  // --- API keys -----------------------------------------------------------

  async putApiKey(record: ApiKeyRecord): Promise<void> {
    await this.guard(
      () =>
        this.redis
          .multi()
          .hset(keys.apiKey(record.id), {
            hash: record.hash,
            tenant: record.tenant,
            name: record.name ?? '',
            created_at: record.createdAt,
            cgroup_prefix: record.cgroupPrefix,
          })
          .zadd(keys.apiKeys(), 0, record.id)
          .exec(),
      {
        what: `the creation of API key ${record.id}`,
        advice:
          'Its secret was not shown, so it is of no use: revoke it with ' +
          `DELETE /api/v1/keys/${record.id} once the store answers (404 means it was never stored), and create another.`,
      },
    );
  }

  async getApiKey(id: string): Promise<ApiKeyRecord | undefined> {
    const h = await this.guard(() => this.redis.hgetall(keys.apiKey(id)));
    return toApiKey(id, h);
  }

  async listApiKeys(): Promise<ApiKeyRecord[]> {
    const ids = await this.guard(() => this.redis.zrange(keys.apiKeys(), 0, -1));
    const hashes = await this.guard(() => Promise.all(ids.map((id) => this.redis.hgetall(keys.apiKey(id)))));
    return hashes.flatMap((h, i) => toApiKey(ids[i] ?? '', h) ?? []);
  }

  /** Removes a key, and tells every API process (`onKeyRevoked`); false if there was none. */
  async deleteApiKey(id: string): Promise<boolean> {
    const r = await this.guard(
      () =>
        this.redis
          .multi()
          .del(keys.apiKey(id))
          .zrem(keys.apiKeys(), id)
          .publish(channels.keyRevoked, id)
          .exec(),
      {
        what: `the revocation of API key ${id}`,
        advice:
          'GET /api/v1/keys once the store answers to see whether it is still listed. ' +
          'Repeating the DELETE is safe (404 key_not_found then means it is revoked).',
      },
    );
    return r?.[0]?.[1] === 1;
  }
}

/**
 * A policy as Redis holds it, its rules parsed only when asked for: a GET
 * answers with the JSON as it is, and the agent's compile cache is keyed by
 * it, so a policy compiled before is not parsed again (never spread it:
 * that would parse them).
 */
function storedPolicy(
  stored: string | undefined,
  rulesJson: string,
  storedDns: string | undefined,
): Policy & { rulesJson: string; dns: DnsMode } {
  let parsed: Rule[] | undefined;
  const rules = (): Rule[] => {
    parsed ??= JSON.parse(rulesJson) as Rule[];
    return parsed;
  };
  let mode = (stored ?? 'unrestricted') as Mode;
  let dns: DnsMode;
  if (stored === LEGACY_BLOCK_DNS_MODE) {
    mode = 'isolated';
    dns = 'none';
  } else if ((DNS_MODES as readonly string[]).includes(storedDns ?? '')) {
    dns = storedDns as DnsMode;
  } else {
    // Stored before `dns` existed: the default (only allowlist mode needs the rules for it).
    dns = mode === 'allowlist' ? defaultDns(mode, rules()) : defaultDns(mode, []);
  }
  return {
    mode,
    dns,
    rulesJson,
    get rules(): Rule[] {
      return rules();
    },
  };
}

/** KEYS of PUT_COMPUTER and DELETE_COMPUTER: everything of a computer, the version counter and the index. */
function computerScriptKeys(id: string): string[] {
  return [
    keys.computer(id),
    keys.policy(id),
    keys.enforced(id),
    keys.version(),
    keys.computers(),
    keys.events(id),
    keys.learned(id),
  ];
}

function enforced(
  version: string | undefined,
  at: string | undefined,
  state: string | undefined,
  reason: string | undefined,
): Enforced | undefined {
  if (!version) return undefined;
  // An older agent wrote no state: it acknowledged only what it enforced.
  const known = (AGENT_STATES as readonly string[]).includes(state ?? '');
  return {
    version: Number(version),
    at: at ?? '',
    state: known ? (state as AgentState) : 'enforced',
    reason: reason ?? '',
  };
}

function toComputer(h: Record<string, string>): Computer | undefined {
  if (h['id'] === undefined) return undefined;
  return {
    id: h['id'],
    cgroup: h['cgroup'] ?? '',
    node: h['node'] ?? '',
    tenant: h['tenant'] ? h['tenant'] : null,
    dnsUpstream: h['dns_upstream'] ? h['dns_upstream'] : null,
    createdAt: h['created_at'] ?? '',
    updatedAt: h['updated_at'] ?? '',
  };
}

function toApiKey(id: string, h: Record<string, string>): ApiKeyRecord | undefined {
  if (h['hash'] === undefined) return undefined;
  return {
    id,
    hash: h['hash'],
    tenant: h['tenant'] ?? '',
    cgroupPrefix: h['cgroup_prefix'] ?? '',
    name: h['name'] ? h['name'] : null,
    createdAt: h['created_at'] ?? '',
  };
}

function toChange(streamId: string, fields: string[]): ChangeRecord {
  const f: Record<string, string> = {};
  for (let i = 0; i + 1 < fields.length; i += 2) f[fields[i] ?? ''] = fields[i + 1] ?? '';
  return {
    streamId,
    computerId: f['computer_id'] ?? '',
    kind: (f['kind'] ?? 'policy') as ChangeKind,
    version: Number(f['version'] ?? 0),
    cgroup: f['cgroup'] ?? '',
    at: f['at'] ?? '',
    seq: Number(f['seq'] ?? 0),
  };
}
