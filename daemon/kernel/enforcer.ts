/**
 * The enforcer: what the agent, the DNS proxy and the tests ask of the
 * kernel side, one computer at a time (attach, apply, detach, learn, list).
 * It keeps each computer's record and its storage value in the "computers"
 * map; the rest is delegated: pins to attachments.ts, rule entries to
 * policy-table.ts, DNS-learned addresses to learned-table.ts, deferred
 * deletion to reclaimer.ts, host settings to host-config.ts, the programs
 * and maps to loader.ts.
 *
 * Atomic replace: a policy's entries are written under a fresh policy id,
 * then one cgroup-storage write switches {mode, policy_id, version} for the
 * computer (the kernel swaps storage values under RCU). The retired id's
 * entries are deleted after an RCU grace period, so no program that read
 * the old id can see a half-deleted policy.
 */
import { EgressdError } from '../../policy/errors.js';
import { COMPUTER_ID_PATTERN, type DnsMode, dnsOf, type Policy } from '../../policy/types.js';
import { findCgroup2Mount, resolveCgroup } from '../system.js';
import {
  CGROUP_KEY_SIZE,
  type ComputerValue,
  decodeComputer,
  decodeMode,
  encodeCgroupKey,
  encodeComputer,
  FLAG,
  type KernelMode,
  LAYOUT,
} from './abi.js';
import { Attachments } from './attachments.js';
import { type CompiledPolicy, nameVerdict } from './compile.js';
import { SandboxGuard } from './guard.js';
import { HostConfig } from './host-config.js';
import { type LearnedName, LearnedTable, type Verdict } from './learned-table.js';
import * as bpf from './libbpf.js';
import {
  closeLoaded,
  HOOKS,
  type HookName,
  type LoadedObject,
  type LoadOptions,
  loadOrAdopt,
} from './loader.js';
import { allKeys, lookup, mapMemory } from './maps.js';
import { PolicyTable } from './policy-table.js';
import { Reclaimer } from './reclaimer.js';

export type { LearnedName } from './learned-table.js';

export interface EnforcerOptions extends LoadOptions {
  /** CIDRs reachable in every mode (agent configuration). @default [] */
  internalCidrs?: string[];
  /** Where cgroup paths are relative to. @default the cgroup2 mount from /proc/self/mountinfo */
  cgroupRoot?: string;
}

export interface ComputerState {
  id: string;
  /** Inode of the attached cgroup; 0n when the cgroup is gone (links defunct). */
  cgroupId: bigint;
  hooks: HookName[];
  mode: KernelMode | 'unknown';
  version: bigint;
  policyId: number;
  learnedId: number;
  dnsPort: number;
  /** EGRESS_FLAG_* bits of the storage value (none are set by this build). */
  flags: number;
}

/**
 * DNS settings of a computer's storage value. What the proxy resolves
 * (`dns` of the policy) is the proxy's business: the kernel sends every
 * governed computer's DNS to it whatever the policy's `dns`.
 */
export interface DnsSettings {
  /** The computer's proxy port; 0 or absent at first attach: DNS refused until the proxy has one. */
  port?: number;
}

/** What this process knows of a computer it attached or adopted. */
interface ComputerRecord {
  cgroupId: bigint;
  policyId: number;
  learnedId: number;
  /** Its policy as compiled for name verdicts (no prefixes). */
  compiled: CompiledPolicy;
  /** What the DNS proxy resolves for the computer (the policy's dns, or its default). */
  dns: DnsMode;
  /** Name chain → its verdict under `compiled` (the record is replaced on every install). */
  verdicts: Map<string, Verdict | undefined>;
}

function cachedVerdict(record: ComputerRecord, names: string[]): Verdict | undefined {
  const key = names.join(' ');
  if (!record.verdicts.has(key)) {
    if (record.verdicts.size > 10_000) record.verdicts.clear();
    record.verdicts.set(key, nameVerdict(record.compiled, names));
  }
  return record.verdicts.get(key);
}

export class Enforcer {
  private readonly attachments: Attachments;
  private readonly reclaimer: Reclaimer;
  private readonly policies: PolicyTable;
  private readonly learned: LearnedTable;
  private readonly host: HostConfig;
  /** Per computer id: its compiled policy and ids. */
  private readonly records = new Map<string, ComputerRecord>();
  private closed = false;
  /** The sandbox-root guard; attach() and detach() keep its governed map. */
  readonly guard: SandboxGuard;

  private constructor(
    private readonly obj: LoadedObject,
    private readonly cgroupRoot: string,
  ) {
    this.attachments = new Attachments(obj);
    this.guard = new SandboxGuard(obj, cgroupRoot);
    this.reclaimer = new Reclaimer(obj.maps);
    this.policies = new PolicyTable(obj.maps, this.reclaimer);
    this.learned = new LearnedTable(obj.maps, this.policies, this.reclaimer);
    this.host = new HostConfig(obj.maps);
  }

  /** Loads the programs, or adopts the pinned ones, and rebuilds the index of installed policies. */
  static open(opts: EnforcerOptions): Enforcer {
    const cgroupRoot = opts.cgroupRoot ?? findCgroup2Mount();
    const obj = loadOrAdopt(opts);
    const enforcer = new Enforcer(obj, cgroupRoot);
    try {
      if (obj.adopted) enforcer.adoptMaps();
      enforcer.setInternalCidrs(opts.internalCidrs ?? []);
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
    for (const key of allKeys(this.obj.maps.computers, CGROUP_KEY_SIZE)) {
      const value = lookup(this.obj.maps.computers, key, LAYOUT.egress_computer.size);
      if (!value) continue;
      const v = decodeComputer(value);
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

  get pinDir(): string {
    return this.obj.pinDir;
  }

  /**
   * Attaches every hook to the computer's cgroup (relative to the cgroup2
   * mount) with `policy` in force from the first connect judged. A computer
   * already attached to that cgroup keeps its attachment (no second one) and
   * gets `policy` unless it already enforces `version`.
   *
   * `learnedNames` names the learned entries an earlier agent left (see
   * awaitsLearnedNames): entries still listed by `policy` are carried over to
   * it; those without a name are not (fail closed: the application resolves
   * again).
   */
  attach(
    id: string,
    cgroup: string,
    policy: Policy,
    version = 0n,
    dns: DnsSettings = {},
    learnedNames?: readonly LearnedName[],
  ): { cgroupId: bigint; attached: boolean } {
    this.checkId(id);
    const target = resolveCgroup(cgroup, this.cgroupRoot);
    // A computer this process attached or adopted at this very cgroup has every hook: no need to
    // read its pins again (nine links each) on every policy change.
    const current =
      this.records.get(id)?.cgroupId === target.id
        ? { cgroupId: target.id, hooks: HOOKS.map((h) => h.name) }
        : this.attachments.linked(id);
    if (current !== undefined && current.cgroupId === target.id && current.hooks.length === HOOKS.length) {
      const value = this.storage(target.id);
      // An earlier build's EGRESS_FLAG_BLOCK_DNS is cleared: the proxy refuses DNS now, the kernel sends it there.
      const sameDns =
        (dns.port === undefined || dns.port === value?.dnsPort) &&
        ((value?.flags ?? 0) & FLAG.blockDns) === 0;
      // An adopted computer: take over its learned entries first, so that a new policy can carry them over.
      if (value && !this.records.has(id)) this.adoptRecord(id, target.id, policy, value, learnedNames);
      if (!value || value.version !== version || !sameDns) this.install(id, target.id, policy, version, dns);
      this.guard.govern(target.id);
      return { cgroupId: target.id, attached: false };
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
    return { cgroupId: target.id, attached: true };
  }

  /** Replaces the computer's policy atomically (DNS settings kept unless given). */
  apply(id: string, policy: Policy, version: bigint, dns: DnsSettings = {}): void {
    this.checkId(id);
    const linked = this.attachments.linked(id);
    if (!linked || linked.cgroupId === 0n || linked.hooks.length !== HOOKS.length) {
      throw new EgressdError(
        'NOT_ATTACHED',
        `computer ${id} is not attached (or its cgroup is gone): attach it before applying a policy`,
      );
    }
    this.install(id, linked.cgroupId, policy, version, dns);
  }

  /** Detaches every hook from the computer's cgroup and removes its pins. Idempotent. */
  detach(id: string): void {
    this.checkId(id);
    if (!this.attachments.has(id)) return;
    const linked = this.attachments.linked(id);
    // The guard refuses the cgroup before its own hooks go.
    this.guard.ungovern(this.records.get(id)?.cgroupId ?? 0n);
    this.guard.ungovern(linked?.cgroupId ?? 0n);
    const oldPolicyId = linked && linked.cgroupId !== 0n ? (this.storage(linked.cgroupId)?.policyId ?? 0) : 0;
    this.attachments.detach(id, linked?.cgroupId);
    if (oldPolicyId) this.policies.release(oldPolicyId);
    const record = this.records.get(id);
    if (record) this.learned.retire(record.learnedId);
    this.records.delete(id);
  }

  /**
   * Writes the policy's entries under a fresh id (or reuses the id of
   * identical entries already installed: they are never changed in place),
   * copies the learned addresses that the new policy still names under a
   * fresh learned id, then switches the computer to both in one write.
   */
  private install(id: string, cgroupId: bigint, policy: Policy, version: bigint, dns: DnsSettings): void {
    const { policyId, compiled } = this.policies.acquire(policy);
    const previous = this.storage(cgroupId);
    const record = this.records.get(id);
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
        flags: 0,
        cgroupId,
      };
      bpf.mapUpdate(this.obj.maps.computers, encodeCgroupKey(cgroupId), encodeComputer(value));
    } catch (err) {
      if (policyId) this.policies.release(policyId);
      this.learned.retire(learnedId);
      throw err;
    }
    if (previous?.policyId) this.policies.release(previous.policyId);
    if (record) this.learned.retire(record.learnedId);
    this.records.set(id, {
      cgroupId,
      policyId,
      learnedId,
      compiled,
      dns: dnsOf(policy),
      verdicts: new Map(),
    });
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
    this.records.set(id, {
      cgroupId,
      policyId: value.policyId,
      learnedId: value.learnedId,
      compiled: this.policies.compiledFor(policy),
      dns: dnsOf(policy),
      verdicts: new Map(),
    });
  }

  /**
   * Whether computer `id` has learned entries that an earlier agent left and
   * whose names this process does not know yet: the kernel keeps addresses,
   * not names, and a policy change needs the names to carry them over.
   * `cgroup` is where attach() will look (a stat, not the nine pins).
   */
  awaitsLearnedNames(id: string, cgroup: string): boolean {
    if (!this.learned.awaitsAnyNames() || this.records.has(id)) return false;
    let cgroupId: bigint;
    try {
      cgroupId = resolveCgroup(cgroup, this.cgroupRoot).id;
    } catch {
      return false; // attach() says what is wrong with the cgroup
    }
    const value = this.storage(cgroupId);
    return value !== undefined && this.learned.awaitsNames(value.learnedId);
  }

  /**
   * Records what a DNS answer taught computer `id`: `names` is the chain
   * (question first, then CNAME targets), `addresses` the A/AAAA bytes. Only
   * names that the policy lists are learned; undefined when none matched.
   * Else how long, in seconds, every address is now learned for (at most
   * `ttlSeconds`: the answer's TTLs must not exceed it), and which addresses
   * were written: an address learned for the same names with at most a
   * second less to live is not written again (repeated lookups of one name).
   * An address that other names taught keeps them, and the later expiry.
   * Throws when the maps refuse the write (the proxy then answers SERVFAIL).
   */
  learn(
    id: string,
    names: string[],
    addresses: number[][],
    ttlSeconds: number,
  ): { lifetimeS: number; written: number[][] } | undefined {
    const record = this.records.get(id);
    if (!record?.learnedId) return undefined;
    const verdict = cachedVerdict(record, names);
    if (!verdict) return undefined;
    const verdictOf = (chain: string[]) => cachedVerdict(record, chain);
    return this.learned.learn(
      record.learnedId,
      record.policyId,
      names,
      verdict,
      verdictOf,
      addresses,
      ttlSeconds,
    );
  }

  /** Whether the computer's policy lists one of `names` (allowlist: allowed; denylist: denied). */
  listsName(id: string, names: string[]): boolean {
    const record = this.records.get(id);
    return record !== undefined && cachedVerdict(record, names) !== undefined;
  }

  /** The computer's mode as compiled by this process, if it knows the computer. */
  modeOf(id: string): Policy['mode'] | undefined {
    const mode = this.records.get(id)?.compiled.mode;
    const name = mode === undefined ? undefined : decodeMode(mode);
    return name === 'pending' ? undefined : name;
  }

  /** What the DNS proxy resolves for the computer under the policy in force, if this process knows it. */
  dnsOf(id: string): DnsMode | undefined {
    return this.records.get(id)?.dns;
  }

  /**
   * The computer attached at cgroup `cgroupId` (deny events): as this process
   * attached it, else as the pins it adopted say (a computer the resync has
   * not reached yet).
   */
  computerAt(cgroupId: bigint): string | undefined {
    for (const [id, record] of this.records) if (record.cgroupId === cgroupId) return id;
    return this.attachments.pinnedComputerAt(cgroupId);
  }

  /** The hostname whose DNS answer taught computer `id` the address, if any. */
  nameOf(id: string, bytes: number[]): string | undefined {
    const record = this.records.get(id);
    return record && this.learned.nameOf(record.learnedId, bytes);
  }

  /** Hostname → addresses that the computer's DNS lookups taught it, unexpired. */
  learnedNames(id: string): { name: string; address: string; expiresInS: number }[] {
    const record = this.records.get(id);
    return record ? this.learned.list(record.learnedId) : [];
  }

  /** Deletes expired learned entries (the kernel ignores them already). */
  expireLearned(): number {
    return this.learned.expire();
  }

  /**
   * Deletes the entries of retired policy and learned ids once an RCU grace
   * period has passed since they were retired. Resolves when the ids retired
   * before the call are gone.
   */
  sweep(): Promise<void> {
    return this.reclaimer.sweep();
  }

  /** The cgroup id this process attached (or adopted) the computer at; undefined when it holds none. */
  attachedCgroupId(id: string): bigint | undefined {
    return this.records.get(id)?.cgroupId;
  }

  /** Drops governed cgroup ids that no pinned computer is attached to (cgroups gone while no agent ran). */
  pruneGoverned(): number {
    const keep = new Set<bigint>();
    for (const id of this.pinnedIds()) {
      const cgroupId = this.records.get(id)?.cgroupId ?? this.attachments.linked(id)?.cgroupId ?? 0n;
      if (cgroupId !== 0n) keep.add(cgroupId);
    }
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
    if (!linked) return undefined;
    const v = linked.cgroupId !== 0n ? this.storage(linked.cgroupId) : undefined;
    return {
      id,
      cgroupId: linked.cgroupId,
      hooks: linked.hooks,
      mode: v ? (decodeMode(v.mode) ?? 'unknown') : 'unknown',
      version: v?.version ?? 0n,
      policyId: v?.policyId ?? 0,
      learnedId: v?.learnedId ?? 0,
      dnsPort: v?.dnsPort ?? 0,
      flags: v?.flags ?? 0,
    };
  }

  /**
   * Where the proxy can be reached: the port range computers' proxy ports
   * come from, and the addresses the hooks use for sockets in other network
   * namespaces than the agent's (none: DNS refused there).
   */
  setDnsConfig(ports: [number, number], proxyV4?: string, proxyV6?: string): void {
    this.host.setDns(ports, proxyV4, proxyV6);
  }

  /** Replaces the internal CIDRs (reachable in every mode): new ones first, then removals. */
  setInternalCidrs(cidrs: string[]): void {
    this.host.setInternalCidrs(cidrs);
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
    this.reclaimer.close();
    closeLoaded(this.obj);
  }

  /** The computer's storage value, or undefined when no programs are attached to the cgroup. */
  private storage(cgroupId: bigint): ComputerValue | undefined {
    const value = lookup(this.obj.maps.computers, encodeCgroupKey(cgroupId), LAYOUT.egress_computer.size);
    return value && decodeComputer(value);
  }

  private checkId(id: string): void {
    if (!COMPUTER_ID_PATTERN.test(id)) {
      throw new EgressdError(
        'BAD_COMPUTER_ID',
        `computer id "${id}" must be 1 to 128 characters of letters, digits, ".", "_" or "-", starting with a letter or digit`,
      );
    }
  }
}
