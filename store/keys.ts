/**
 * Every Redis key, stream and channel name that egressd uses: the one module
 * that the API and the agent share. Names are built only here; the Lua
 * scripts get the node- and tenant-dependent ones as `%s` templates made by
 * these same functions (see `templates`).
 *
 * Ids, node and tenant names are validated before they get here
 * (`[A-Za-z0-9._-]`, and `~` in a tenant's computer ids), so they never
 * contain `:` or `%`.
 */
const PREFIX = 'egressd:';

export const keys = {
  /** Hash: id, cgroup, node, tenant ('' for none), created_at, updated_at, dns_upstream (absent: none). */
  computer: (id: string) => `${PREFIX}computer:${id}`,
  /**
   * Hash: mode, rules (JSON of normalised rules), dns (listed, all, none), audit ('1' or '0'), version, updated_at.
   * Written before dns existed: no dns, and "isolated+block_dns" as a mode (still read, see policies.ts);
   * before audit existed: no audit (read as '0').
   */
  policy: (id: string) => `${PREFIX}computer:${id}:policy`,
  /** Capped stream of a computer's deny events (field `event`: JSON), written by the agent. */
  events: (id: string) => `${PREFIX}computer:${id}:events`,
  /** Hash written by the agent: "<name> <address>" → expiry (ms since the epoch) of what the computer's DNS taught it. */
  learned: (id: string) => `${PREFIX}computer:${id}:learned`,
  /**
   * Hash written by the agent (observations.ts): "<host> <port> <protocol>" → "<count> <first> <last>"
   * (times in ms since the epoch) of what the computer connected to; at most MAX_OBSERVATIONS fields.
   */
  observed: (id: string) => `${PREFIX}computer:${id}:observed`,
  /** Hash written by the agent (`Store.ackEnforced`): version, at, node, state, reason ('' when none), revocation. */
  enforced: (id: string) => `${PREFIX}computer:${id}:enforced`,
  /** Sorted set (all scores 0, ordered by id) of every computer id. */
  computers: () => `${PREFIX}computers`,
  /** Sorted set of the ids of the computers on one node. */
  nodeComputers: (node: string) => `${PREFIX}node:${node}:computers`,
  /** Hash cgroup path → computer id, one per node: a cgroup belongs to one computer. */
  nodeCgroups: (node: string) => `${PREFIX}node:${node}:cgroups`,
  /** Sorted set (scores 0) of the cgroup paths of one node's computers: finds nested ones by prefix. */
  nodeCgroupPaths: (node: string) => `${PREFIX}node:${node}:cgroup-paths`,
  /**
   * Stream of change records for one node's agent (see ChangeRecord in changes.ts); beside it the
   * counter `<stream>:seq`, the `seq` of the node's last record (the Lua scripts derive its name).
   */
  nodeChanges: (node: string) => `${PREFIX}node:${node}:changes`,
  /**
   * Hash written by a node's agent (nodes.ts): kernel, version, started_at, seen_at, features (JSON),
   * store (JSON of NodeStoreState, '' before the agent checked the store); TTL 60 s.
   */
  nodeStatus: (node: string) => `${PREFIX}node:${node}:status`,
  /** Sorted set of node names, scored by when each last wrote its status (ms since the epoch). */
  nodes: () => `${PREFIX}nodes`,
  /** Sorted set of the ids of one tenant's computers. */
  tenantComputers: (tenant: string) => `${PREFIX}tenant:${tenant}:computers`,
  /**
   * Hash: the store's identity (store/identity.ts): id (random hex), created_at (ms since the epoch),
   * replaces (space-separated ids of lost stores an operator accepted this one for; absent: none).
   * Made when missing by the API (at start, on reconnect) and by an agent that never followed a store.
   */
  storeIdentity: () => `${PREFIX}store`,
  /** Counter: the one sequence that every version is drawn from, so versions never go back. */
  version: () => `${PREFIX}version`,
  /** Hash: hash (sha256 hex of the whole key), tenant, name, created_at, cgroup_prefix. */
  apiKey: (keyId: string) => `${PREFIX}apikey:${keyId}`,
  /** Sorted set of every API key id. */
  apiKeys: () => `${PREFIX}apikeys`,
  /**
   * Hash of one dashboard session (sessions.ts), named by the sha256 hex of its id (the cookie's
   * value is never stored): kind, key_id, tenant, admin, csrf, secure, created_at, expires_at.
   * Its TTL is the idle limit, renewed by each request.
   */
  uiSession: (idHash: string) => `${PREFIX}ui-session:${idHash}`,
} as const;

export const channels = {
  /**
   * Pub/sub channel: each acknowledgement publishes "<computer id> <version> <at> <state>[ <reason>]"
   * (earlier builds published "<computer id> <version>": waiters then read the key).
   */
  enforced: `${PREFIX}enforced`,
  /**
   * Pub/sub channel: `DELETE /api/v1/keys/{id}` publishes the key's id, so that
   * every API process ends the event streams that the key holds open.
   */
  keyRevoked: `${PREFIX}apikey-revoked`,
  /** Pub/sub channel: DELETE_COMPUTER publishes the id; every API process ends that computer's event streams. */
  computerDeleted: `${PREFIX}computer-deleted`,
} as const;

/** `%s` templates of the names that a Lua script derives from a value it reads. */
export const templates = {
  computer: keys.computer('%s'),
  policy: keys.policy('%s'),
  nodeComputers: keys.nodeComputers('%s'),
  nodeCgroups: keys.nodeCgroups('%s'),
  nodeCgroupPaths: keys.nodeCgroupPaths('%s'),
  nodeChanges: keys.nodeChanges('%s'),
  tenantComputers: keys.tenantComputers('%s'),
} as const;
