/**
 * Live revocation, the agent's side: the computers whose policy the kernel
 * just started to enforce wait here, unreported, until one revocation pass
 * (Enforcer.revoke) has closed the connections those policies refuse, for
 * all of them at once; then each is reported with what was closed, so that a
 * PUT's 200 means the connections are closed too.
 */
import type { Logger } from 'pino';
import type { Revocation } from '../../store/store.js';
import type { Enforcer, RevokedRecord } from '../kernel/enforcer.js';
import type { Reported, Reports } from './reports.js';

export class Revocations {
  private pending = new Map<string, { cgroup: string; report: Reported }>();

  constructor(
    private readonly enforcer: Enforcer,
    private readonly reports: Reports,
    private readonly log: Logger,
    /** Each socket closed (the deny events' way). */
    private readonly onRevoked?: (id: string, socket: RevokedRecord) => void,
  ) {}

  /** The policy in force for computer `id` (at `cgroup`) changed: report `report` once its pass is done. */
  add(id: string, cgroup: string, report: Reported): void {
    if (this.enforcer.revocation !== 'on') {
      this.reports.set(id, { ...report, revocation: { state: this.enforcer.revocation } });
      return;
    }
    this.pending.set(id, { cgroup, report });
  }

  /** Forgets a computer (detached): nothing to report. */
  drop(id: string): void {
    this.pending.delete(id);
  }

  /** One pass for every computer waiting; each is then reported. */
  async run(): Promise<void> {
    if (this.pending.size === 0) return;
    const pending = this.pending;
    this.pending = new Map();
    let results: Map<string, RevokedRecord[]> | undefined;
    try {
      results = await this.enforcer.revoke([...pending].map(([id, p]) => ({ id, cgroup: p.cgroup })));
    } catch (err) {
      this.log.error({ err, computers: pending.size }, 'revocation pass failed: connections may stay open');
    }
    for (const [id, { report }] of pending) {
      const records = results?.get(id);
      if (results && !records) continue; // detached meanwhile
      const failed = records?.filter((r) => r.error !== 0) ?? [];
      for (const r of records ?? []) if (r.error === 0) this.onRevoked?.(id, r);
      if (failed.length > 0) {
        this.log.error(
          { computer: id, failed: failed.length, errno: -(failed[0]?.error ?? 0) },
          'some connections could not be closed',
        );
      }
      const revocation: Revocation =
        records === undefined || failed.length > 0
          ? { state: 'failed' }
          : { state: 'on', revoked: records.length };
      if (revocation.state === 'on' && revocation.revoked > 0)
        this.log.info({ computer: id, revoked: revocation.revoked }, 'connections revoked');
      this.reports.set(id, { ...report, revocation });
    }
  }
}
