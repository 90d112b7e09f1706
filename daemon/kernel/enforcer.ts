/**
 * The enforcer: what the agent, the DNS proxy and the tests ask of the kernel
 * side (attach, apply, detach, learn, revoke, list), over the modules that do
 * the work: loader.ts, attachments.ts (link pins), computers.ts (storage
 * values), policy-table.ts, learned-table.ts, reclaimer.ts (deferred
 * deletion), host-config.ts, guard.ts, revoker.ts (live revocation).
 *
 * Atomic replace: a policy's entries are written under a fresh policy id,
 * then one cgroup-storage write switches {mode, policy_id, version} for the
 * computer (the kernel swaps storage values under RCU). The retired id's
 * entries are deleted after an RCU grace period, so no program that read
 * the old id can see a half-deleted policy.
 */
import path from 'node:path';
import { EgressdError } from '../../policy/errors.js';
import { type DnsMode, dnsOf, type Policy } from '../../policy/types.js';
import { type ComputerValue, decodeMode } from './abi.js';
import { Attachments } from './attachments.js';
import {
  type ComputerState,
  Computers,
  cachedVerdict,
  checkComputerId,
  type DnsSettings,
  flagsOf,
} from './computers.js';
import { SandboxGuard } from './guard.js';
import { HostConfig } from './host-config.js';
import { type LearnedName, LearnedTable } from './learned-table.js';
import { closeLoaded, HOOKS, type LoadedObject, type LoadOptions, loadOrAdopt } from './loader.js';
import { mapMemory, readObserved } from './maps.js';
import { PolicyTable } from './policy-table.js';
import { Reclaimer } from './reclaimer.js';
import type { ObservedEntry, RevokedRecord } from './records.js';
import { Revoker } from './revoker.js';
import { findCgroup2Mount, resolveCgroup } from './system.js';

export type { ComputerState, DnsSettings } from './computers.js';
export type { LearnedName } from './learned-table.js';
export type { ObservedEntry, RevokedRecord } from './records.js';

export interface EnforcerOptions extends LoadOptions {
  /** CIDRs reachable in every mode (agent configuration). @default [] */
  internalCidrs?: string[];
  /** Where cgroup paths are relative to. @default the cgroup2 mount from /proc/self/mountinfo */
  cgroupRoot?: string;
  /** Close a computer's connections that a new policy refuses, where the kernel can ('netlink': by netlink even with the kfunc). @default true */
  revocation?: boolean | 'netlink';
  /** Which computers' calls the kernel counts (observations): every one, those in audit, none. @default 'all' */
  observe?: 'all' | 'audit' | 'off';
}

export class Enforcer {
  private readonly attachments: Attachments;
  private readonly reclaimer: Reclaimer;
  private readonly policies: PolicyTable;
  private readonly learned: LearnedTable;
  private readonly host: HostConfig;
  private readonly computers: Computers;
  private closed = false;
  private revoker: Revoker | undefined;
  /** The sandbox-root guard; attach() and detach() keep its governed map. */
  readonly guard: SandboxGuard;
  /** Live revocation: on, off (EnforcerOptions.revocation), or unsupported by this kernel (why: revocationProblem). */
  revocation: 'on' | 'off' | 'unsupported' = 'off';
  revocationProblem: string | undefined;

  private constructor(
    private readonly obj: LoadedObject,
    private readonly cgroupRoot: string,
    private readonly observe: EnforcerOptions['observe'] = 'all',
  ) {
    this.attachments = new Attachments(obj);
    this.guard = new SandboxGuard(obj, cgroupRoot);
    this.reclaimer = new Reclaimer(obj.maps);
    this.policies = new PolicyTable(obj.maps, this.reclaimer);
    this.learned = new LearnedTable(obj.maps, this.policies, this.reclaimer);
    this.host = new HostConfig(obj.maps);
    this.computers = new Computers(obj.maps.computers, obj.maps.computer_values);
  }

  /** Loads the programs, or adopts the pinned ones, and rebuilds the index of installed policies. */
  static open(opts: EnforcerOptions): Enforcer {
    const cgroupRoot = opts.cgroupRoot ?? findCgroup2Mount();
    const obj = loadOrAdopt(opts);
    const enforcer = new Enforcer(obj, cgroupRoot, opts.observe);
    try {
      if (obj.adopted) enforcer.adoptMaps();
      enforcer.setInternalCidrs(opts.internalCidrs ?? []);
      if (opts.revocation !== false) {
        const r = Revoker.tryOpen(obj.maps, opts.revocation === 'netlink');
        enforcer.revoker = r.revoker;
        enforcer.revocation = r.revoker ? 'on' : 'unsupported';
        enforcer.revocationProblem = r.problem;
      }
    } catch (err) {
      enforcer.close();
      throw err;
    }
    return enforcer;
  }

  /** Indexes what an earlier agent left in the maps and pins; what no computer uses any more is retired. */
  private adoptMaps(): void {
    const policyRefs = new Map<number, number>();
    const learnedIds = new Set<number>();
    for (const v of this.computers.values()) {
      policyRefs.set(v.policyId, (policyRefs.get(v.policyId) ?? 0) + 1);
      if (v.learnedId) learnedIds.add(v.learnedId);
    }
    this.policies.adopt(policyRefs);
    this.learned.adopt(learnedIds);
    this.attachments.adoptPins();
  }

  /** A map's fd, for readers beside the enforcer (the deny-event ring buffer). */
  mapFd(name: 'deny_events'): number {
    return this.obj.maps[name];
  }
  get adopted(): boolean {
    return this.obj.adopted;
  }

  /**
   * Attaches every hook to the computer's cgroup (relative to the cgroup2 mount) with `policy`
   * in force from the first connect judged. A computer already attached there keeps its
   * attachment and gets `policy` unless it already enforces `version`. `learnedNames` names the
   * learned entries an earlier agent left (see awaitsLearnedNames): those `policy` still lists
   * are carried over; those without a name are not (fail closed: the application resolves again).
   * `changed`: the kernel's state of the computer changed (a new attachment, or a policy written).
   */
  attach(
    id: string,
    cgroup: string,
    policy: Policy,
    version = 0n,
    dns: DnsSettings = {},
    learnedNames?: readonly LearnedName[],
  ): { cgroupId: bigint; attached: boolean; changed: boolean } {
    checkComputerId(id);
    const target = resolveCgroup(cgroup, this.cgroupRoot);
    // A computer this process attached or adopted at this very cgroup has every hook: no need to
    // read its pins again (nine links each) on every policy change.
    const current =
      this.computers.record(id)?.cgroupId === target.id
        ? { cgroupId: target.id, hooks: HOOKS.map((h) => h.name) }
        : this.attachments.linked(id);
    if (current !== undefined && current.cgroupId === target.id && current.hooks.length === HOOKS.length) {
      const value = this.computers.value(target.id);
      // An adopted computer: take over its learned entries first, so that a new policy can carry them over.
      if (value && !this.computers.record(id)) this.adoptRecord(id, target.id, policy, value, learnedNames);
      // Flags follow the policy and --observe (an agent started with another --observe rewrites them).
      const newPort = dns.port !== undefined && dns.port !== value?.dnsPort;
      const changed = value?.version !== version || newPort || value.flags !== flagsOf(policy, this.observe);
      if (changed) this.install(id, target.id, policy, version, dns);
      this.guard.govern(target.id);
      return { cgroupId: target.id, attached: false, changed };
    }
    // Attached elsewhere (the cgroup was recreated, or the computer moved): start over.
    if (current !== undefined) this.detach(id);
    try {
      // The storage exists once the first hook is attached: write the policy
      // before any connect or sendmsg hook can judge with it.
      this.attachments.attach(id, target.path, () => this.install(id, target.id, policy, version, dns));
    } catch (err) {
      this.detach(id);
      throw err;
    }
    // Past the guard only now that every hook holds the policy.
    this.guard.govern(target.id);
    return { cgroupId: target.id, attached: true, changed: true };
  }

  /** Replaces the computer's policy atomically (DNS settings kept unless given). */
  apply(id: string, policy: Policy, version: bigint, dns: DnsSettings = {}): void {
    checkComputerId(id);
    const linked = this.attachments.linked(id);
    if (!linked || linked.cgroupId === 0n || linked.hooks.length !== HOOKS.length) {
      throw new EgressdError(
        'NOT_ATTACHED',
        `computer ${id} is not attached (or its cgroup is gone): attach it before applying a policy`,
      );
    }
    this.install(id, linked.cgroupId, policy, version, dns);
  }

  /**
   * Live revocation: closes the connected sockets of each computer (`cgroup`
   * relative to the cgroup2 mount) whose peer its policy in force refuses,
   * in one pass. What was closed (or could not be), by computer id; nothing
   * unless `revocation` is on.
   */
  async revoke(computers: readonly { id: string; cgroup: string }[]): Promise<Map<string, RevokedRecord[]>> {
    const targets = computers.flatMap(({ id, cgroup }) => {
      const cgroupId = this.computers.record(id)?.cgroupId;
      const value = cgroupId === undefined ? undefined : this.computers.value(cgroupId);
      const cgroupPath = path.join(this.cgroupRoot, path.posix.normalize(`/${cgroup}`));
      return value ? [{ id, value, cgroupPath }] : [];
    });
    return this.revoker ? this.revoker.revoke(targets) : new Map(targets.map((t) => [t.id, []]));
  }

  /** Detaches every hook from the computer's cgroup and removes its pins. Idempotent. */
  detach(id: string): void {
    checkComputerId(id);
    if (!this.attachments.has(id)) return;
    const linked = this.attachments.linked(id);
    // The guard refuses the cgroup before its own hooks go.
    for (const cgroupId of [this.computers.record(id)?.cgroupId ?? 0n, linked?.cgroupId ?? 0n])
      this.computers.unmirror(this.guard.ungovern(cgroupId));
    const oldPolicyId =
      linked && linked.cgroupId !== 0n ? (this.computers.value(linked.cgroupId)?.policyId ?? 0) : 0;
    this.attachments.detach(id, linked?.cgroupId);
    if (oldPolicyId) this.policies.release(oldPolicyId);
    const record = this.computers.record(id);
    if (record) this.learned.retire(record.learnedId);
    this.computers.forget(id);
  }

  /**
   * Writes the policy's entries under a fresh id (or reuses the id of
   * identical entries already installed: they are never changed in place),
   * copies the learned addresses that the new policy still names under a
   * fresh learned id, then switches the computer to both in one write.
   */
  private install(id: string, cgroupId: bigint, policy: Policy, version: bigint, dns: DnsSettings): void {
    const { policyId, compiled } = this.policies.acquire(policy);
    const previous = this.computers.value(cgroupId);
    const record = this.computers.record(id);
    let learnedId = 0;
    try {
      if (compiled.names.length > 0) {
        learnedId = this.learned.allocate();
        if (record) this.learned.carryOver(record.learnedId, learnedId, policyId, compiled);
      }
      const value: ComputerValue = {
        mode: compiled.mode,
        policyId,
        version,
        learnedId,
        dnsPort: dns.port ?? previous?.dnsPort ?? 0,
        flags: flagsOf(policy, this.observe),
        cgroupId,
      };
      this.computers.write(value);
    } catch (err) {
      if (policyId) this.policies.release(policyId);
      this.learned.retire(learnedId);
      throw err;
    }
    if (previous?.policyId) this.policies.release(previous.policyId);
    if (record) this.learned.retire(record.learnedId);
    const audit = policy.audit === true;
    this.computers.remember(id, { cgroupId, policyId, learnedId, compiled, dns: dnsOf(policy), audit });
  }

  /** Takes over a computer attached by an earlier agent, with its learned entries (named by `names`), without rewriting anything. */
  private adoptRecord(
    id: string,
    cgroupId: bigint,
    policy: Policy,
    value: ComputerValue,
    names: readonly LearnedName[] = [],
  ): void {
    this.learned.nameAdopted(value.learnedId, names);
    this.computers.remember(id, {
      cgroupId,
      policyId: value.policyId,
      learnedId: value.learnedId,
      compiled: this.policies.compiledFor(policy),
      dns: dnsOf(policy),
      audit: !!policy.audit,
    });
  }

  /**
   * Whether computer `id` has learned entries that an earlier agent left and
   * whose names this process does not know yet: the kernel keeps addresses,
   * not names, and a policy change needs the names to carry them over.
   * `cgroup` is where attach() will look (a stat, not the nine pins).
   */
  awaitsLearnedNames(id: string, cgroup: string): boolean {
    if (!this.learned.awaitsAnyNames() || this.computers.record(id)) return false;
    let cgroupId: bigint;
    try {
      cgroupId = resolveCgroup(cgroup, this.cgroupRoot).id;
    } catch {
      return false; // attach() says what is wrong with the cgroup
    }
    const value = this.computers.value(cgroupId);
    return value !== undefined && this.learned.awaitsNames(value.learnedId);
  }

  /**
   * Records what a DNS answer taught computer `id` (`names`: the chain, question first; `addresses`:
   * A/AAAA bytes) for the names its policy lists (none: undefined): how long every address is now
   * learned for (at most `ttlSeconds`), which were written. Throws when the maps refuse (SERVFAIL).
   */
  learn(
    id: string,
    names: string[],
    addresses: number[][],
    ttlSeconds: number,
  ): { lifetimeS: number; written: number[][] } | undefined {
    const record = this.computers.record(id);
    if (!record?.learnedId) return undefined;
    const verdictOf = (chain: string[]) => cachedVerdict(record, chain);
    return this.learned.learn(record.learnedId, record.policyId, names, addresses, ttlSeconds, verdictOf);
  }

  /** Whether the computer's policy lists one of `names` (allowlist: allowed; denylist: denied). */
  listsName(id: string, names: string[]): boolean {
    const record = this.computers.record(id);
    return record !== undefined && cachedVerdict(record, names) !== undefined;
  }

  /**
   * What the DNS proxy goes by, under the policy in force, if this process knows the computer:
   * its mode, what it resolves (dns), and whether it is in audit.
   */
  dnsPolicyOf(id: string): { mode: Policy['mode']; dns: DnsMode; audit: boolean } | undefined {
    const record = this.computers.record(id);
    const mode = record && decodeMode(record.compiled.mode);
    return record && mode && mode !== 'pending' ? { mode, dns: record.dns, audit: record.audit } : undefined;
  }

  /**
   * The computer attached at cgroup `cgroupId` (deny events): as this process
   * attached it, else as the pins it adopted say (a computer the resync has
   * not reached yet).
   */
  computerAt(cgroupId: bigint): string | undefined {
    return this.computers.idAt(cgroupId) ?? this.attachments.pinnedComputerAt(cgroupId);
  }

  /** The hostname whose DNS answer taught computer `id` the address, if any. */
  nameOf(id: string, bytes: number[]): string | undefined {
    const record = this.computers.record(id);
    return record && this.learned.nameOf(record.learnedId, bytes);
  }

  /** Hostname → addresses that the computer's DNS lookups taught it, unexpired. */
  learnedNames(id: string): { name: string; address: string; expiresInS: number }[] {
    const record = this.computers.record(id);
    return record ? this.learned.list(record.learnedId) : [];
  }

  /** Deletes learned entries expired for longer than `graceMs` (the kernel ignores them already). */
  expireLearned(graceMs?: number): number {
    return this.learned.expire(graceMs);
  }

  /** Deletes what was retired before the call (policy and learned ids) once an RCU grace period has passed. */
  sweep(): Promise<void> {
    return this.reclaimer.sweep();
  }

  /** The cgroup id this process attached (or adopted) the computer at; undefined when it holds none. */
  attachedCgroupId(id: string): bigint | undefined {
    return this.computers.record(id)?.cgroupId;
  }

  /** Drops governed cgroup ids that no pinned computer is attached to (cgroups gone while no agent ran). */
  pruneGoverned(): number {
    const keep = new Set<bigint>();
    for (const id of this.pinnedIds()) {
      const cgroupId = this.computers.record(id)?.cgroupId ?? this.attachments.linked(id)?.cgroupId ?? 0n;
      if (cgroupId !== 0n) keep.add(cgroupId);
    }
    this.computers.pruneMirror(keep);
    return this.guard.prune(keep);
  }

  /** The ids of every computer with pins (cheap: no syscall per hook, unlike list()). */
  pinnedIds(): string[] {
    return this.attachments.ids();
  }

  /** Every computer with pins, with what the kernel holds for it. */
  list(): ComputerState[] {
    return this.pinnedIds()
      .map((id) => this.state(id))
      .filter((s) => s !== undefined);
  }

  /** What the kernel holds for one computer, or undefined when it has no pins. */
  state(id: string): ComputerState | undefined {
    const linked = this.attachments.linked(id);
    return linked && this.computers.state(id, linked);
  }

  /** Where the DNS proxy can be reached: computers' port range, addresses for other namespaces (see HostConfig). */
  setDnsConfig(ports: [number, number], proxyV4?: string, proxyV6?: string): void {
    this.host.setDns(ports, proxyV4, proxyV6);
  }

  /** Replaces the internal CIDRs (reachable in every mode): new ones first, then removals. */
  setInternalCidrs(cidrs: string[]): void {
    this.host.setInternalCidrs(cidrs);
  }

  /** Every destination the computers' calls went to ("observed"; daemon/agent/observer.ts). */
  observed(): ObservedEntry[] {
    return readObserved(this.obj.maps.observed);
  }

  /** Kernel memory of each map, from /proc/self/fdinfo (memlock). */
  mapMemory(): Record<string, number> {
    return mapMemory(this.obj.maps);
  }

  /** Entries this process installed, from its own index (cheap; for metrics). */
  installedEntryCounts(): { rules_v4: number; rules_v6: number; rule_ports: number; learned: number } {
    return { ...this.policies.entryCounts(), learned: this.learned.count() };
  }

  /** Entries in the rule maps, counted by walking them (diagnostics and tests; O(entries)). */
  ruleEntryCounts(): { v4: number; v6: number; ports: number } {
    return this.policies.countMapEntries();
  }

  /** Closes this process's file descriptors; pins, links and policies stay in force. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.revoker?.close();
    this.reclaimer.close();
    closeLoaded(this.obj);
  }
}
