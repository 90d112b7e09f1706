/**
 * What the agent reports of each computer (the version in force, its state,
 * and why when it is not enforced), and the acknowledgements of it not yet
 * written to Redis.
 */
import type { Logger } from 'pino';
import { AGENT_STATES, type AgentState, type Revocation, type Store } from '../../store/store.js';
import type { AgentMetrics } from '../metrics.js';
import type { ComputerReport } from './options.js';

export interface Reported {
  version: number;
  state: AgentState;
  reason?: string;
  /** What putting this version in force closed (Revocations); absent when nothing changed in the kernel. */
  revocation?: Revocation;
}

export class Reports {
  private readonly reported = new Map<string, Reported>();
  private readonly unacked = new Set<string>();
  /** While the store is lost (store-identity.ts): nothing is written to it. */
  private held = false;

  constructor(
    private readonly store: Pick<Store, 'ackEnforced'>,
    private readonly node: string,
    private readonly log: Logger,
  ) {}

  get(id: string): Reported | undefined {
    return this.reported.get(id);
  }

  /** Records what to report of a computer (written by flush); logs changes of state that need an operator. */
  set(id: string, next: Reported): void {
    const before = this.reported.get(id);
    if (
      before?.version === next.version &&
      before.state === next.state &&
      (next.revocation === undefined || JSON.stringify(before.revocation) === JSON.stringify(next.revocation))
    )
      return;
    this.reported.set(id, next);
    this.unacked.add(id);
    // version_regressed is logged by VersionGate, once per version refused.
    const logged = next.state !== 'enforced' && next.state !== 'version_regressed';
    if (logged && before?.state !== next.state) {
      const level = next.state === 'cgroup_missing' ? 'info' : 'warn';
      this.log[level]({ computer: id, state: next.state, reason: next.reason }, `computer ${next.state}`);
    }
  }

  /**
   * Writes every acknowledgement again at the next flush: after a reconnect
   * the store may have lost them or gone back on them (a failover to a
   * replica that missed them, a Redis restored from a copy).
   */
  rewriteAll(): void {
    for (const id of this.reported.keys()) this.unacked.add(id);
  }

  /**
   * While the store is lost nothing is written to it: an acknowledgement of a lost store's
   * version would confirm a PUT in the new store that no agent applied (versions start again).
   */
  hold(held: boolean): void {
    this.held = held;
  }

  /** Forgets every report: they were a lost store's (another store was accepted). */
  clear(): void {
    this.reported.clear();
    this.unacked.clear();
  }

  /** Forgets a computer: nothing more is reported of it. */
  delete(id: string): void {
    this.reported.delete(id);
    this.unacked.delete(id);
  }

  /** The egressd_computers gauge, by state (O(computers), from the periodic check). */
  countStates(metrics: AgentMetrics | undefined): void {
    if (!metrics) return;
    const counts = new Map<AgentState, number>(AGENT_STATES.map((s) => [s, 0]));
    for (const r of this.reported.values()) counts.set(r.state, (counts.get(r.state) ?? 0) + 1);
    for (const [state, n] of counts) metrics.computerStates.set({ state }, n);
  }

  /** Writes the acknowledgements not yet written, pipelined; failed ones stay queued for the next try. */
  async flush(): Promise<void> {
    if (this.held) return;
    const ids = [...this.unacked];
    this.unacked.clear();
    const at = new Date();
    const results = await Promise.allSettled(
      ids.map(async (id) => {
        const r = this.reported.get(id);
        if (r !== undefined)
          await this.store.ackEnforced(id, r.version, at, this.node, r.state, r.reason ?? '', r.revocation);
      }),
    );
    const failed = results.flatMap((r, i) =>
      r.status === 'rejected' ? [{ id: ids[i]!, reason: r.reason }] : [],
    );
    for (const f of failed) this.unacked.add(f.id);
    if (failed[0]) throw failed[0].reason;
  }
}

/** Desired vs. enforced version per computer (Agent.report()). */
export function computerReports(
  desired: ReadonlyMap<string, { cgroup: string; version: number }>,
  reports: Pick<Reports, 'get'>,
  failures: ReadonlyMap<string, string>,
): ComputerReport[] {
  return [...desired.entries()].map(([id, want]) => {
    const reported = reports.get(id);
    const error = failures.get(id) ?? reported?.reason;
    const state: ComputerReport['state'] = failures.has(id)
      ? 'failed'
      : reported?.version === want.version
        ? reported.state
        : 'pending';
    return {
      id,
      cgroup: want.cgroup,
      desiredVersion: want.version,
      enforcedVersion: reported?.version ?? null,
      state,
      ...(error ? { error } : {}),
    };
  });
}
