/**
 * STUB KERNEL, BENCH ONLY. An enforcer with no BPF at all, for the real
 * Agent class (daemon/agent/agent.ts) in bench/capacity.ts, which runs many
 * simulated hosts without root: it remembers, per computer, the cgroup id
 * (the directory's inode, as the real one resolves it) and the version it
 * was asked to enforce, and nothing reaches a kernel. Its attach() refuses a
 * missing cgroup directory with CGROUP_MISSING, as the real one does; it
 * compiles no rules (the real apply is measured by bench/agent.ts:
 * egressd_policy_apply_seconds), has no pins (a stub agent that restarts
 * starts from nothing), no guard (run the agents with `roots: []`), no
 * revocation (`off`), no learned addresses and no map memory.
 *
 * Never use it outside bench/: it enforces nothing.
 */
import path from 'node:path';
import { cgroupIdAt } from '../daemon/agent/cgroup-watch.js';
import type { ComputerState, DnsSettings, Enforcer } from '../daemon/kernel/enforcer.js';
import { EgressdError } from '../policy/errors.js';
import type { Policy } from '../policy/types.js';

/** What the agent asks of its enforcer (daemon/agent: agent.ts, versions.ts, revocations.ts, dns-settings.ts). */
type AgentSide = Pick<
  Enforcer,
  | 'attach'
  | 'detach'
  | 'state'
  | 'attachedCgroupId'
  | 'awaitsLearnedNames'
  | 'pinnedIds'
  | 'pruneGoverned'
  | 'expireLearned'
  | 'mapMemory'
  | 'revoke'
  | 'revocation'
>;

/** The label every figure measured with it carries. */
export const STUB_LABEL = 'stub kernel, bench only';

export class StubEnforcer implements AgentSide {
  revocation: Enforcer['revocation'] = 'off';
  /** attach() calls that changed a computer's state: what a real enforcer would have written to the kernel. */
  applies = 0;
  private readonly held = new Map<string, { cgroupId: bigint; version: bigint; dnsPort: number }>();

  constructor(private readonly cgroupRoot: string) {}

  /** This stub as the agent's `enforcer` option (the class has private members, so no structural match). */
  asEnforcer(): Enforcer {
    return this as unknown as Enforcer;
  }

  /** The guard exists only in the kernel: the bench's agents run with no sandbox roots. */
  get guard(): never {
    throw new Error(`${STUB_LABEL}: no sandbox guard; run the agent with roots: []`);
  }

  attach(
    id: string,
    cgroup: string,
    _policy: Policy,
    version = 0n,
    dns: DnsSettings = {},
  ): { cgroupId: bigint; attached: boolean; changed: boolean } {
    const full = path.join(this.cgroupRoot, path.posix.normalize(`/${cgroup}`));
    const cgroupId = cgroupIdAt(full);
    if (cgroupId === 0n) throw new EgressdError('CGROUP_MISSING', `${STUB_LABEL}: no directory ${full}`);
    const had = this.held.get(id);
    const attached = had?.cgroupId !== cgroupId;
    const changed = attached || had?.version !== version;
    this.held.set(id, { cgroupId, version, dnsPort: dns.port ?? had?.dnsPort ?? 0 });
    if (changed) this.applies++;
    return { cgroupId, attached, changed };
  }

  detach(id: string): void {
    this.held.delete(id);
  }

  state(id: string): ComputerState | undefined {
    const h = this.held.get(id);
    if (!h) return undefined;
    return {
      id,
      cgroupId: h.cgroupId,
      hooks: [],
      mode: 'unknown',
      version: h.version,
      policyId: 0,
      learnedId: 0,
      dnsPort: h.dnsPort,
      flags: 0,
    };
  }

  attachedCgroupId(id: string): bigint | undefined {
    return this.held.get(id)?.cgroupId;
  }

  awaitsLearnedNames(): boolean {
    return false;
  }

  /** No pins: nothing survives this process. */
  pinnedIds(): string[] {
    return [];
  }

  pruneGoverned(): number {
    return 0;
  }

  expireLearned(): number {
    return 0;
  }

  mapMemory(): Record<string, number> {
    return {};
  }

  /** Revocation is off: the agent never calls this. */
  async revoke(computers: readonly { id: string }[]): Promise<Map<string, never[]>> {
    return new Map(computers.map((c) => [c.id, []]));
  }
}
