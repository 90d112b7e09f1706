/**
 * Versions never go back for a computer. Redis replicates asynchronously: after
 * a failover the store may hold an older policy than one this agent already
 * put in force. The agent remembers, per computer, the highest version it put
 * in force (after a restart: the version in the kernel's storage value) and
 * refuses any desired state with a lower one (`version_regressed`): the newer
 * policy stays in the kernel until a version at least as high arrives.
 *
 * - The memory goes only when the computer leaves the node (DELETE, or moved
 *   to another node): a real removal detaches, and a computer registered
 *   later under the same id starts afresh. Or all of it, when an operator
 *   accepts a new store in place of a lost one (store-identity.ts): versions
 *   start again there. A failover to a copy of the same store keeps it.
 * - A "reset" to an older policy is a PUT of that policy: it draws a new,
 *   higher version, and that is applied. Nothing makes an agent apply a lower
 *   version; a host whose pins are gone (a reboot) enforces what Redis says.
 * - The version counter is in Redis too and may have gone back with the
 *   rest: the agent raises it to the version it keeps (Store.raiseVersion)
 *   before it reports, so the PUT the reason asks for draws a higher one.
 *
 * EnforcedVersions is pure (unit-tested); VersionGate does the agent's I/O around it.
 */
import type { Logger } from 'pino';
import type { AgentOptions } from './options.js';
import type { Reports } from './reports.js';

export interface Regression {
  /** The version in force, kept. */
  kept: number;
  /** The older version asked for, refused. */
  asked: number;
  /** True the first time this (computer, version) is refused: log and count it then. */
  first: boolean;
}

export class EnforcedVersions {
  private readonly highest = new Map<string, number>();
  private readonly refused = new Set<string>();

  /** Whether the computer's version in force is known (else: seed it from the kernel). */
  knows(id: string): boolean {
    return this.highest.has(id);
  }

  /** Records `version` as put in force for `id` (the highest stays: a seed of 0 changes nothing). */
  enforced(id: string, version: number): void {
    this.highest.set(id, Math.max(this.highest.get(id) ?? 0, version));
  }

  /** The regression if `asked` is older than the version in force for `id`; undefined when it may be applied. */
  check(id: string, asked: number): Regression | undefined {
    const kept = this.highest.get(id);
    if (kept === undefined || asked >= kept) return undefined;
    const key = `${id} ${asked}`;
    const first = !this.refused.has(key);
    this.refused.add(key);
    return { kept, asked, first };
  }

  /** The computer left the node: its memory goes (a later registration starts afresh). */
  forget(id: string): void {
    this.highest.delete(id);
    const prefix = `${id} `;
    for (const key of this.refused) if (key.startsWith(prefix)) this.refused.delete(key);
  }

  /**
   * Another store was accepted in place of a lost one (store-identity.ts): its versions start
   * again. Everything is forgotten, and `inKernel` (the computers whose kernel state holds a lost
   * store's version) count as version 0, not as their kernel's version.
   */
  reset(inKernel: Iterable<string>): void {
    this.highest.clear();
    this.refused.clear();
    for (const id of inKernel) this.highest.set(id, 0);
  }
}

/** What the API shows for a refused version: which is kept, which was asked for, and what to do. */
export function regressionReason(node: string, r: Pick<Regression, 'kept' | 'asked'>): string {
  return (
    `node ${node} keeps version ${r.kept} of the policy in force and refuses version ${r.asked}, an older one: ` +
    `the store lost later writes (a Redis failover or a restore). To end this, PUT the policy you want again ` +
    `(the one in force, or the stored one): it gets a version above ${r.kept} and is applied`
  );
}

/** The agent's side of EnforcedVersions: refuses, logs once, counts, raises the counter and reports. */
export class VersionGate {
  private readonly versions = new EnforcedVersions();
  /** Computers whose kernel state holds a lost store's version (reset()), until they are written again. */
  private readonly stale = new Set<string>();

  constructor(
    private readonly opts: Pick<AgentOptions, 'node' | 'store' | 'enforcer' | 'metrics'>,
    private readonly reports: Pick<Reports, 'set'>,
    private readonly log: Logger,
  ) {}

  /** True when `version` is older than the one in force for `id`: then nothing is to change in the kernel. */
  async refuses(id: string, version: number): Promise<boolean> {
    // After a restart: the version an earlier agent put in force, from the kernel's storage value.
    if (!this.versions.knows(id))
      this.versions.enforced(id, Number(this.opts.enforcer.state(id)?.version ?? 0n));
    const r = this.versions.check(id, version);
    if (r === undefined) return false;
    if (r.first) {
      this.log.warn(
        { computer: id, kept: r.kept, asked: r.asked },
        'refused an older version of the policy (the store lost later writes): the newer one stays in force',
      );
      this.opts.metrics?.versionRegressions.inc({ computer: id });
    }
    // Before the report: the PUT its reason asks for must draw a version above the kept one.
    await this.opts.store.raiseVersion(r.kept);
    const reason = regressionReason(this.opts.node, r);
    this.reports.set(id, { version, state: 'version_regressed', reason });
    return true;
  }

  enforced(id: string, version: number): void {
    this.versions.enforced(id, version);
  }

  forget(id: string): void {
    this.versions.forget(id);
    this.stale.delete(id);
  }

  reset(inKernel: Iterable<string>): void {
    const ids = [...inKernel];
    this.versions.reset(ids);
    this.stale.clear();
    for (const id of ids) this.stale.add(id);
  }

  /**
   * True once for a computer whose kernel state holds a lost store's version: the enforcer
   * takes an equal version for the same policy, but versions started again in the accepted
   * store, so its policy must be written anyway.
   */
  restamp(id: string): boolean {
    return this.stale.delete(id);
  }
}
