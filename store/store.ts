/**
 * The store: every read and write of egressd's state in Redis, for the API
 * and for the agent, in one object. Each part lives in a module of its own
 * (policies, computers, changes, acks, events, learned, observations, api-keys, sessions) over one
 * connection (connection.ts: what an outage surfaces as); changes run as
 * Lua scripts (scripts.ts), atomically.
 */
import type { Redis } from 'ioredis';
import type { Policy } from '../policy/types.js';
import { Acks, type AgentState, type Enforced, type Revocation } from './acks.js';
import { type ApiKeyRecord, ApiKeys } from './api-keys.js';
import { type ChangeRecord, Changes, type NodeSnapshot } from './changes.js';
import {
  type Computer,
  type ComputerInput,
  Computers,
  type PutComputerResult,
  type Scope,
} from './computers.js';
import { Connection } from './connection.js';
import { StoreUnavailableError } from './errors.js';
import { EventFeed } from './event-feed.js';
import { Events, type RecentCount } from './events.js';
import { Identities, type StoreIdentity } from './identity.js';
import { channels, keys } from './keys.js';
import { Learned, type LearnedName } from './learned.js';
import { type NodeStatus, Nodes } from './nodes.js';
import { Notifications } from './notifications.js';
import { type Observation, Observations } from './observations.js';
import { Policies, type PolicyRecord, type PolicyStatus, type PutPolicyResult } from './policies.js';
import { type SessionRecord, Sessions, sessionExists } from './sessions.js';

export { AGENT_STATES, type AgentState, type Enforced, inForce, type Revocation } from './acks.js';
export type { ApiKeyRecord } from './api-keys.js';
export type { ChangeKind, ChangeRecord, NodeSnapshot } from './changes.js';
export type { Computer, ComputerInput, PutComputerResult, Scope } from './computers.js';
export { RECENT_COUNT_CAP, type RecentCount } from './events.js';
export { STORE_ID, type StoreIdentity } from './identity.js';
export type { LearnedName } from './learned.js';
export {
  type FeatureState,
  NODE_STATUS_INTERVAL_MS,
  NODE_STATUS_TTL_MS,
  type NodeStatus,
  type NodeStoreState,
} from './nodes.js';
export { MAX_OBSERVATIONS, type Observation } from './observations.js';
export type { PolicyRecord, PolicyStatus, PutPolicyResult } from './policies.js';
export type { SessionRecord } from './sessions.js';

export interface StoreOptions {
  /** Redis URL: `redis://host:port/db`, `unix:///path/to/socket` or `redis+sentinel://h1,h2,h3/<master>` (redis-url.ts). */
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
  /**
   * Replicas that must have each change the API acknowledges (PUT and
   * DELETE of computers and policies, API keys made and revoked) before it
   * is acknowledged: each is followed by WAIT (connection.ts write()), and
   * fewer replicas in time is ReplicationTimeoutError. 0: no WAIT. The
   * agent's writes (acknowledgements, events, learned names) and dashboard
   * sessions are not waited for: a failover may lose the last of them (a
   * sign-in then asks for another; a sign-out lost revives a session whose
   * cookie the browser dropped, until its idle or maximum age).
   * @default 0
   */
  minReplicas?: number;
  /**
   * How long a change waits for `minReplicas` replicas, ms.
   * @default 1000
   */
  replicaTimeoutMs?: number;
}

export class Store {
  /** The main connection (tests and benchmarks read Redis through it). */
  readonly redis: Redis;
  private readonly conn: Connection;
  private readonly notices: Notifications;
  private readonly policies: Policies;
  private readonly computers: Computers;
  private readonly changes: Changes;
  private readonly acks: Acks;
  private readonly events: Events;
  private readonly learned: Learned;
  private readonly observations: Observations;
  private readonly apiKeys: ApiKeys;
  private readonly sessions: Sessions;
  private readonly nodes: Nodes;
  private readonly identities: Identities;
  private feed: EventFeed | undefined;

  constructor(options: StoreOptions) {
    this.conn = new Connection(options.url, options.commandTimeoutMs ?? 2000, {
      minReplicas: options.minReplicas ?? 0,
      timeoutMs: options.replicaTimeoutMs ?? 1000,
    });
    this.redis = this.conn.redis;
    const streamMaxLen = String(options.streamMaxLen ?? 10_000);
    this.policies = new Policies(this.conn, streamMaxLen);
    this.computers = new Computers(this.conn, streamMaxLen);
    this.changes = new Changes(this.conn);
    this.acks = new Acks(this.conn, options.waitPollMs ?? 2000);
    this.events = new Events(this.conn);
    this.learned = new Learned(this.conn);
    this.observations = new Observations(this.conn);
    this.apiKeys = new ApiKeys(this.conn);
    this.sessions = new Sessions(this.conn);
    this.nodes = new Nodes(this.conn);
    this.identities = new Identities(this.conn);
    this.notices = new Notifications(this.conn);
    this.notices.on(
      channels.enforced,
      (message) => this.acks.notice(message),
      () => this.acks.wakeAll(),
    );
    this.notices.on(
      channels.keyRevoked,
      (keyId) => this.apiKeys.notice(keyId),
      () => this.apiKeys.notice(),
    );
    this.notices.on(channels.computerDeleted, (id) => this.feed?.endComputer(id));
  }

  /**
   * Connects, and subscribes to acknowledgements. Rejects if Redis cannot be
   * reached now; the clients keep reconnecting in the background all the
   * same (a server may start before Redis and answer 503 until it is up).
   * Rejects for good with RedisClusterError on a Redis Cluster node.
   */
  async connect(): Promise<void> {
    const subscribed = this.notices.start();
    await this.conn.ready();
    await this.conn.refuseCluster();
    await subscribed;
  }

  /** Resolves when the main connection is ready (one being made now); StoreUnavailableError after `ms` or on its error. */
  async connected(ms: number): Promise<void> {
    try {
      await this.conn.ready(ms);
    } catch (err) {
      throw new StoreUnavailableError(err as Error);
    }
  }

  /** RedisClusterError when the Redis is a Redis Cluster node (see Store.connect). */
  refuseCluster(): Promise<void> {
    return this.conn.refuseCluster();
  }

  /** Calls `listener` each time the main connection becomes ready from now on (reconnects); returns its remover. */
  onReady(listener: () => void): () => void {
    this.redis.on('ready', listener);
    return () => this.redis.off('ready', listener);
  }

  // --- the store's identity (identity.ts) ---------------------------------

  /** Which data set this Redis holds; undefined when it has no identity (new, or emptied). */
  storeIdentity(): Promise<StoreIdentity | undefined> {
    return this.identities.get();
  }

  /** The identity, made when missing; `lost`: ids of lost stores this one now replaces (an operator's accept). */
  ensureStoreIdentity(lost: readonly string[] = []): Promise<StoreIdentity> {
    return this.identities.ensure(lost);
  }

  async close(): Promise<void> {
    this.feed?.close();
    this.conn.close();
    this.notices.close();
    this.changes.close();
  }

  /** True if Redis answers PING now. */
  ping(): Promise<boolean> {
    return this.conn.ping();
  }

  /** Runs `fn`, turning "Redis is not there" into StoreUnavailableError. */
  guard<T>(fn: () => Promise<T>): Promise<T> {
    return this.conn.guard(fn);
  }

  /**
   * Calls `listener` with the id of every API key revoked (by any process),
   * and with no id when notices may have been lost (the subscriber
   * reconnected): then the listener must check its keys itself. Returns the
   * function that removes it. Needs connect().
   */
  onKeyRevoked(listener: (keyId?: string) => void): () => void {
    return this.apiKeys.onRevoked(listener);
  }

  /**
   * The process's one reader of computers' deny events, for every SSE
   * stream (one connection of its own, opened at the first subscription).
   */
  eventFeed(): EventFeed {
    this.feed ??= new EventFeed({
      connect: () =>
        this.conn.open({
          lazyConnect: false,
          commandTimeout: undefined,
          enableAutoPipelining: false,
          // A read in flight when the connection drops fails at once (the feed ends its subscribers) ...
          maxRetriesPerRequest: 0,
          // ... and is not sent again after the reconnect.
          autoResendUnfulfilledCommands: false,
        }),
      unblock: (clientId) => this.redis.client('UNBLOCK', clientId) as Promise<number>,
      cursor: (id) => this.events.cursor(id),
      streamKey: keys.events,
    });
    return this.feed;
  }

  // --- policies (policies.ts) ---------------------------------------------

  getPolicy(id: string, scope: Scope = ''): Promise<PolicyRecord | undefined> {
    return this.policies.get(id, scope);
  }

  putPolicy(
    id: string,
    policy: Policy,
    options: { scope?: Scope; ifMatch?: number; now?: Date } = {},
  ): Promise<PutPolicyResult> {
    return this.policies.put(id, policy, options);
  }

  policyStatuses(ids: string[]): Promise<Map<string, PolicyStatus>> {
    return this.policies.statuses(ids);
  }

  // --- computers (computers.ts) -------------------------------------------

  getComputer(id: string, scope: Scope = ''): Promise<Computer | undefined> {
    return this.computers.get(id, scope);
  }

  putComputer(
    id: string,
    input: ComputerInput,
    options: { scope?: Scope; defaultNode?: string; now?: Date } = {},
  ): Promise<PutComputerResult> {
    return this.computers.put(id, input, options);
  }

  deleteComputer(id: string, scope: Scope = '', now: Date = new Date()): Promise<boolean> {
    return this.computers.delete(id, scope, now);
  }

  listComputers(options: {
    scope?: Scope;
    node?: string;
    cursor?: string;
    limit: number;
  }): Promise<{ computers: Computer[]; nextCursor: string | null }> {
    return this.computers.list(options);
  }

  // --- the agent's change feed (changes.ts) -------------------------------

  listComputersOfNode(node: string): Promise<NodeSnapshot> {
    return this.changes.snapshot(node);
  }

  readChanges(
    node: string,
    fromId: string,
    options: { count?: number; blockMs?: number } = {},
  ): Promise<ChangeRecord[]> {
    return this.changes.read(node, fromId, options);
  }

  firstChangeId(node: string): Promise<string> {
    return this.changes.firstId(node);
  }

  // --- acknowledgements (acks.ts) -----------------------------------------

  waitEnforced(
    id: string,
    version: number,
    timeoutMs: number,
    options: { pastMissing?: boolean } = {},
  ): Promise<Enforced | undefined> {
    return this.acks.wait(id, version, timeoutMs, options);
  }

  ackEnforced(
    id: string,
    version: number,
    at: Date = new Date(),
    node = '',
    state: AgentState = 'enforced',
    reason = '',
    revocation?: Revocation,
  ): Promise<boolean> {
    return this.acks.ack(id, version, at, node, state, reason, revocation);
  }

  /** Raises the version counter to at least `version` (an agent refusing an older one; see RAISE_VERSION). */
  async raiseVersion(version: number): Promise<boolean> {
    return (await this.conn.run('raiseVersion', [keys.version()], [String(version)])) === 1;
  }

  // --- what the agent records: deny events (events.ts), learned names (learned.ts)

  appendEvents(id: string, events: object[]): Promise<void> {
    return this.events.append(id, events);
  }

  getEvents(id: string, scope: Scope, limit: number, sinceMs = 0): Promise<unknown[] | undefined> {
    return this.events.get(id, scope, limit, sinceMs);
  }

  /** Deny events of each computer since `sinceMs`, counted up to RECENT_COUNT_CAP (one pipeline). */
  recentEventCounts(ids: readonly string[], sinceMs: number): Promise<Map<string, RecentCount>> {
    return this.events.recentCounts(ids, sinceMs);
  }

  putLearned(id: string, entries: LearnedName[]): Promise<void> {
    return this.learned.put(id, entries);
  }

  getLearned(id: string, scope: Scope = ''): Promise<LearnedName[] | undefined> {
    return this.learned.get(id, scope);
  }

  /** Merges what the agent saw the computer connect to (observations.ts). */
  putObservations(id: string, seen: readonly Observation[]): Promise<void> {
    return this.observations.put(id, seen);
  }

  /** What the computer connected to, last seen at `since` (ms) or later; undefined when not visible under `scope`. */
  getObservations(id: string, scope: Scope = '', since = 0): Promise<Observation[] | undefined> {
    return this.observations.get(id, scope, since);
  }

  // --- API keys (api-keys.ts) ---------------------------------------------

  putApiKey(record: ApiKeyRecord): Promise<void> {
    return this.apiKeys.put(record);
  }

  getApiKey(id: string): Promise<ApiKeyRecord | undefined> {
    return this.apiKeys.get(id);
  }

  listApiKeys(): Promise<ApiKeyRecord[]> {
    return this.apiKeys.list();
  }

  deleteApiKey(id: string): Promise<boolean> {
    return this.apiKeys.delete(id);
  }

  // --- dashboard sessions (sessions.ts), named by the sha256 hex of their id

  putSession(idHash: string, record: SessionRecord, ttlMs: number): Promise<void> {
    return this.sessions.put(idHash, record, ttlMs);
  }

  /** The session, its TTL renewed to `ttlMs`; undefined when it ended. */
  touchSession(idHash: string, ttlMs: number): Promise<SessionRecord | undefined> {
    return this.sessions.touch(idHash, ttlMs);
  }

  deleteSession(idHash: string): Promise<void> {
    return this.sessions.delete(idHash);
  }

  sessionExists(idHash: string): Promise<boolean> {
    return sessionExists(this.conn, idHash);
  }

  // --- what each node's agent says of itself (nodes.ts)

  putNodeStatus(status: NodeStatus): Promise<void> {
    return this.nodes.put(status);
  }

  nodeStatuses(): Promise<NodeStatus[]> {
    return this.nodes.list();
  }
}
