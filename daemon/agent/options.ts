/** The agent's options and what it reports (daemon/agent/agent.ts). */
import type { Logger } from 'pino';
import type { AgentState, Store } from '../../store/store.js';
import type { DnsProxy } from '../dns/proxy.js';
import type { Enforcer, RevokedRecord } from '../kernel/enforcer.js';
import type { AgentMetrics } from '../metrics.js';

/** store_lost: connected, but the store is not the one it follows (store-identity.ts): it keeps what it enforces. */
export type AgentStatus = 'starting' | 'syncing' | 'following' | 'store_lost' | 'disconnected' | 'stopped';

export interface ComputerReport {
  id: string;
  cgroup: string;
  desiredVersion: number;
  enforcedVersion: number | null;
  state: AgentState | 'pending' | 'failed';
  error?: string;
}

export interface AgentOptions {
  store: Store;
  enforcer: Enforcer;
  node: string;
  /** The cgroup2 mount; computers' cgroup paths are relative to it. */
  cgroupRoot: string;
  log: Logger;
  /** Longest wait between reconnect attempts. @default 5000 */
  maxBackoffMs?: number;
  /** How long one XREAD blocks before it is issued again. @default 5000 */
  blockMs?: number;
  /** The DNS proxy; without one, governed computers get no DNS at all (fail closed). */
  proxy?: DnsProxy;
  metrics?: AgentMetrics;
  /**
   * Sandbox roots (relative to the cgroup2 mount): the guard is attached to
   * each, and computers are attached only strictly below one. [] attaches
   * anywhere and guards nothing (tests of the agent alone).
   * @default []
   */
  roots?: string[];
  /** Cgroups a computer must never be, nor be an ancestor of: egressd's own, Redis's. @default [this process's] */
  protectedCgroups?: string[];
  /** How often every attachment's cgroup id is compared with the one at its path. @default 5000 */
  verifyIntervalMs?: number;
  /**
   * Where the agent remembers the id of the store it follows (store-identity.ts), so that a
   * restarted agent knows it too; none: in memory only (tests of the agent alone).
   */
  storeIdFile?: string;
  /** How often the store's identity is checked while following, and again while it is lost. @default 5000 */
  storeCheckMs?: number;
  /** Called when the store becomes lost or followed again (the node status says it at once). */
  onStoreState?: () => void;
  /** Each connection a policy change closed (live revocation), for deny events. */
  onRevoked?: (id: string, socket: RevokedRecord) => void;
}
