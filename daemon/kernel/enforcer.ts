/**
 * The enforcer: attaches the pinned programs to computers' cgroups, installs
 * policies atomically, detaches, lists. It owns <pinDir>/computers/<id>/<hook>
 * link pins; the programs and maps come from loader.ts.
 *
 * Atomic replace: a policy's entries are written under a fresh policy id,
 * then one cgroup-storage write switches {mode, policy_id, version} for the
 * computer (the kernel swaps storage values under RCU). The retired id's
 * entries are deleted by sweep(), after an RCU grace period, so no program
 * that read the old id can see a half-deleted policy.
 */
import { createHash } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmdirSync } from 'node:fs';
import { constants } from 'node:os';
import path from 'node:path';
import ipaddr from 'ipaddr.js';
import { EgressdError } from '../../policy/errors.js';
import { parseHost } from '../../policy/host.js';
import { COMPUTER_ID_PATTERN, type DnsMode, dnsOf, type Policy } from '../../policy/types.js';
import { findCgroup2Mount, resolveCgroup } from '../system.js';
import {
  CONFIG_SLOT,
  type ComputerValue,
  decodeComputer,
  decodeLearned,
  encodeCgroupKey,
  encodeComputer,
  encodeInternalKey,
  encodeLearned,
  encodeLearnedKey,
  encodeU32,
  encodeU64,
  FLAG,
  LAYOUT,
  MODE,
  readPortKeyPolicyId,
  readPortKeyPortSet,
  readRuleKeyPolicyId,
  ruleKeySize,
  writePortKey,
  writeRuleKey,
  writeRuleValue,
} from './abi.js';
import { type CompiledPolicy, compile, nameVerdict } from './compile.js';
import { SandboxGuard } from './guard.js';
import * as bpf from './libbpf.js';
import { pinCgroupLink, readCgroupLink, unpinCgroupLink } from './links.js';
import {
  closeLoaded,
  HOOKS,
  type HookName,
  type LoadedObject,
  type LoadOptions,
  loadOrAdopt,
} from './loader.js';

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
  mode: keyof typeof MODE | 'unknown';
  version: bigint;
  policyId: number;
  learnedId: number;
  dnsPort: number;
  /** EGRESS_FLAG_* bits of the storage value (none are set by this build). */
  flags: number;
}

/** The encoded entries of one installed policy id, kept so they can be deleted. */
interface Installed {
  v4: Buffer;
  v6: Buffer;
  ports: Buffer;
  /** Computers whose storage points at this id. */
  refs: number;
  /** Content hash of the compiled entries; '' when unknown (adopted from pins). */
  hash: string;
  /** Port code list ("code,code") → port set id, and the highest id in use. */
  portSets: Map<string, number>;
  maxPortSet: number;
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

/** A hostname and one address it resolved to (as the agent publishes them to Redis). */
export interface LearnedName {
  name: string;
  address: string;
}

interface LearnedEntry {
  /** The DNS chain it was learned from (question first); [] when adopted from pins. */
  names: string[];
  bytes: number[];
  expiresNs: bigint;
  /** Its key in learned_v4/learned_v6. */
  key: Buffer;
}

interface ComputerRecord {
  cgroupId: bigint;
  policyId: number;
  learnedId: number;
  compiled: CompiledPolicy;
  /** What the DNS proxy resolves for the computer (the policy's dns, or its default). */
  dns: DnsMode;
  /** learnedKey(bytes) → entry */
  learned: Map<string, LearnedEntry>;
  /** Name chain → its verdict under `compiled` (the record is replaced on every install). */
  verdicts: Map<string, ReturnType<typeof nameVerdict>>;
}

/** Distinct policies whose compiled name rules and content hash install() remembers. */
const COMPILED_CACHE_SIZE = 1024;

interface CachedPolicy {
  /** forNames() of the compiled policy: what name verdicts need. */
  compiled: CompiledPolicy;
  /** contentHash() of the whole compiled policy. */
  hash: string;
  /** Whether it has rule-map entries (prefixes or names) at all. */
  hasEntries: boolean;
}

/** A policy's mode and rules: as they are up to 8 KiB, hashed beyond (the cache stays small). */
function policyKey(policy: Policy): string {
  const text = `${policy.mode}\n${policy.rulesJson ?? JSON.stringify(policy.rules)}`;
  return text.length <= 8192 ? text : createHash('sha256').update(text).digest('base64');
}

/** Names one learned address keeps at most: the newest answer's chain first. */
const MAX_NAMES_PER_ADDRESS = 8;

function mergeNames(newest: string[], older: readonly string[]): string[] {
  return [...newest, ...older.filter((n) => !newest.includes(n))].slice(0, MAX_NAMES_PER_ADDRESS);
}

function learnedKey(bytes: number[]): string {
  return bytes.join('.');
}

function formatAddress(bytes: number[]): string {
  return ipaddr.fromByteArray(bytes).toString();
}

const MODE_NAMES = Object.fromEntries(Object.entries(MODE).map(([k, v]) => [v, k])) as Record<
  number,
  keyof typeof MODE
>;

const { E2BIG, EINVAL, ENOMEM, ENOSPC, EOPNOTSUPP } = constants.errno;

const PORT_KEY_SIZE = LAYOUT.egress_port_key.size;
const RULE_VALUE_SIZE = LAYOUT.egress_rule.size;

export class Enforcer {
  private readonly computersDir: string;
  private readonly cgroupRoot: string;
  private readonly installed = new Map<number, Installed>();
  /** Content hash → policy id: computers with the same rules share one set of entries. */
  private readonly byHash = new Map<string, number>();
  /**
   * What install() needs of recently compiled policies, by a hash of their
   * rules: platforms give many computers the same policy, and a resync would
   * compile it for each. Entries keep no prefixes: a policy whose entries
   * are no longer installed is compiled again.
   */
  private readonly compiledCache = new Map<string, CachedPolicy>();
  private retired: number[] = [];
  private nextPolicyId: number;
  private nextLearnedId: number;
  /** Per computer id: its compiled policy and what its DNS answers taught it. */
  private readonly records = new Map<string, ComputerRecord>();
  /**
   * The cgroup id of each computer found pinned at start (an adopted pin
   * directory), by cgroup id, until this process attaches or detaches it:
   * deny events name computers by cgroup id, and those the kernel wrote while
   * no agent ran are read before the resync has attached anything.
   */
  private readonly pinnedCgroups = new Map<bigint, string>();
  /** Learned entries found in the pins at start, by learned id, until their computer is attached. */
  private readonly adoptedLearned = new Map<number, LearnedEntry[]>();
  /** Learned ids whose entries go at the next sweep, with their keys. */
  private retiredLearned: { v4: Buffer[]; v6: Buffer[] }[] = [];
  private sweeping: Promise<void> | undefined;
  private closed = false;
  /** The sandbox-root guard; attach() and detach() keep its governed map. */
  readonly guard: SandboxGuard;

  private constructor(
    private readonly obj: LoadedObject,
    cgroupRoot: string,
  ) {
    this.computersDir = path.join(obj.pinDir, 'computers');
    mkdirSync(this.computersDir, { recursive: true });
    this.cgroupRoot = cgroupRoot;
    this.guard = new SandboxGuard(obj, cgroupRoot);
    const next = Buffer.alloc(8);
    bpf.mapLookup(obj.maps.config, encodeU32(CONFIG_SLOT.nextPolicyId), next);
    this.nextPolicyId = Math.max(1, Number(next.readBigUInt64LE()));
    bpf.mapLookup(obj.maps.config, encodeU32(CONFIG_SLOT.nextLearnedId), next.fill(0));
    this.nextLearnedId = Math.max(1, Number(next.readBigUInt64LE()));
  }

  /** Loads the programs, or adopts the pinned ones, and rebuilds the index of installed policies. */
  static open(opts: EnforcerOptions): Enforcer {
    const cgroupRoot = opts.cgroupRoot ?? findCgroup2Mount();
    const obj = loadOrAdopt(opts);
    const enforcer = new Enforcer(obj, cgroupRoot);
    try {
      if (obj.adopted) {
        enforcer.rebuildIndex();
        enforcer.indexPinnedCgroups();
      }
      enforcer.setInternalCidrs(opts.internalCidrs ?? []);
    } catch (err) {
      enforcer.close();
      throw err;
    }
    return enforcer;
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
    const dir = path.join(this.computersDir, id);
    // A computer this process attached or adopted at this very cgroup has every hook: no need to
    // read its pins again (nine links each) on every policy change.
    const current =
      this.records.get(id)?.cgroupId === target.id
        ? { cgroupId: target.id, hooks: HOOKS.map((h) => h.name) }
        : this.linkedCgroup(id);
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
    mkdirSync(dir, { recursive: true });
    const cgroupFd = openSync(target.path, 'r');
    try {
      for (const [i, hook] of HOOKS.entries()) {
        this.attachHook(dir, cgroupFd, hook);
        // The storage exists once the first hook is attached: write the policy
        // before any connect or sendmsg hook can judge with it.
        if (i === 0) this.install(id, target.id, policy, version, dns);
      }
    } catch (err) {
      closeSync(cgroupFd);
      this.detach(id);
      throw err;
    }
    closeSync(cgroupFd);
    // Past the guard only now that every hook holds the policy.
    this.guard.govern(target.id);
    return { cgroupId: target.id, attached: true };
  }

  /**
   * Links one hook and pins the link. An unpinned link lives only as long as
   * the fd of the process that made it, so an agent that dies between the
   * two steps leaves no attachment behind: nothing to adopt, nothing doubled.
   */
  private attachHook(dir: string, cgroupFd: number, hook: (typeof HOOKS)[number]): void {
    pinCgroupLink(this.obj.programs[hook.name].fd, cgroupFd, hook.attachType, path.join(dir, hook.name));
  }

  /** The cgroup that the computer's pinned links point at, or undefined when it has none. */
  private linkedCgroup(id: string): { cgroupId: bigint; hooks: HookName[] } | undefined {
    const dir = path.join(this.computersDir, id);
    if (!existsSync(dir)) return undefined;
    const hooks: HookName[] = [];
    let cgroupId: bigint | undefined;
    for (const hook of HOOKS) {
      const info = readCgroupLink(path.join(dir, hook.name));
      if (!info) continue;
      hooks.push(hook.name);
      if (cgroupId === undefined || info.cgroupId === 0n) cgroupId = info.cgroupId;
    }
    return { cgroupId: cgroupId ?? 0n, hooks };
  }

  /** Replaces the computer's policy atomically (DNS settings kept unless given). */
  apply(id: string, policy: Policy, version: bigint, dns: DnsSettings = {}): void {
    this.checkId(id);
    const linked = this.linkedCgroup(id);
    if (!linked || linked.cgroupId === 0n || linked.hooks.length !== HOOKS.length) {
      throw new EgressdError(
        'NOT_ATTACHED',
        `computer ${id} is not attached (or its cgroup is gone): attach it before applying a policy`,
      );
    }
    this.install(id, linked.cgroupId, policy, version, dns);
  }

  private storage(cgroupId: bigint): ComputerValue | undefined {
    const value = Buffer.alloc(LAYOUT.egress_computer.size);
    return bpf.mapLookup(this.obj.maps.computers, encodeCgroupKey(cgroupId), value)
      ? decodeComputer(value)
      : undefined;
  }

  /**
   * Writes the policy's entries under a fresh id (or reuses the id of
   * identical entries already installed: they are never changed in place),
   * copies the learned addresses that the new policy still names under a
   * fresh learned id, then switches the computer to both in one write.
   */
  private install(id: string, cgroupId: bigint, policy: Policy, version: bigint, dns: DnsSettings): void {
    const { cached, full } = this.compileCached(policy, true);
    const { compiled, hash } = cached;
    const key = encodeCgroupKey(cgroupId);
    const previous = this.storage(cgroupId);
    let policyId = 0;
    if (cached.hasEntries) {
      const shared = this.byHash.get(hash);
      if (shared !== undefined) {
        policyId = shared;
      } else {
        policyId = this.allocatePolicyId();
        this.writeEntries(policyId, full ?? compile(policy), hash);
        this.byHash.set(hash, policyId);
      }
      this.installed.get(policyId)!.refs++;
    }
    const record = this.records.get(id);
    const learned = new Map<string, LearnedEntry>();
    let learnedId = 0;
    try {
      if (compiled.names.length > 0) {
        learnedId = this.allocateLearnedId();
        for (const [k, entry] of record?.learned ?? []) {
          if (entry.expiresNs <= process.hrtime.bigint() || entry.names.length === 0) continue;
          const verdict = nameVerdict(compiled, entry.names);
          if (!verdict) continue;
          learned.set(
            k,
            this.writeLearned(policyId, verdict, learnedId, entry.names, entry.bytes, entry.expiresNs),
          );
        }
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
      bpf.mapUpdate(this.obj.maps.computers, key, encodeComputer(value));
    } catch (err) {
      if (policyId) this.release(policyId);
      this.retireLearned(learned);
      throw err;
    }
    if (previous?.policyId) this.release(previous.policyId);
    if (record) this.retireLearned(record.learned);
    this.records.set(id, {
      cgroupId,
      policyId,
      learnedId,
      compiled,
      dns: dnsOf(policy),
      learned,
      verdicts: new Map(),
    });
  }

  /**
   * The policy's cached compilation; with `forInstall`, also the whole
   * compiled policy when its entries are not installed (to write them).
   */
  private compileCached(
    policy: Policy,
    forInstall: boolean,
  ): { cached: CachedPolicy; full?: CompiledPolicy } {
    const rulesKey = policyKey(policy);
    let cached = this.compiledCache.get(rulesKey);
    let full: CompiledPolicy | undefined;
    if (!cached || (forInstall && cached.hasEntries && !this.byHash.has(cached.hash))) {
      full = compile(policy);
      cached = {
        compiled: forNames(full),
        hash: contentHash(full),
        hasEntries: full.prefixes.length > 0 || full.names.length > 0,
      };
    }
    this.compiledCache.delete(rulesKey); // most recently used last: the first key is evicted first
    this.compiledCache.set(rulesKey, cached);
    if (this.compiledCache.size > COMPILED_CACHE_SIZE) {
      this.compiledCache.delete(this.compiledCache.keys().next().value!);
    }
    return full ? { cached, full } : { cached };
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
    const now = process.hrtime.bigint();
    const wanted = now + BigInt(Math.round(ttlSeconds * 1e9));
    let until = wanted;
    const written: number[][] = [];
    for (const bytes of addresses) {
      const key = learnedKey(bytes);
      const known = record.learned.get(key);
      const live = known !== undefined && known.expiresNs > now ? known : undefined;
      if (
        live !== undefined &&
        ttlSeconds >= 2 &&
        live.expiresNs + 1_000_000_000n >= wanted &&
        names.every((n) => live.names.includes(n))
      ) {
        // Already learned for these names, for long enough: no write (repeated lookups of a name).
        if (live.expiresNs < until) until = live.expiresNs;
        continue;
      }
      // An address several names share (a CDN, virtual hosts) stays learned for all of them, as
      // long as the longest-lived answer: each client may use its own cached answer until then.
      const merged = live ? mergeNames(names, live.names) : names;
      const mergedVerdict = merged === names ? verdict : cachedVerdict(record, merged);
      const expiresNs = live !== undefined && live.expiresNs > wanted ? live.expiresNs : wanted;
      record.learned.set(
        key,
        this.writeLearned(
          record.policyId,
          mergedVerdict ?? verdict,
          record.learnedId,
          merged,
          bytes,
          expiresNs,
        ),
      );
      written.push(bytes);
    }
    return { lifetimeS: Number(until - now) / 1e9, written };
  }

  /** Whether the computer's policy lists one of `names` (allowlist: allowed; denylist: denied). */
  listsName(id: string, names: string[]): boolean {
    const record = this.records.get(id);
    return record !== undefined && cachedVerdict(record, names) !== undefined;
  }

  /** The computer's mode as compiled by this process, if it knows the computer. */
  modeOf(id: string): Policy['mode'] | undefined {
    const mode = this.records.get(id)?.compiled.mode;
    return mode === undefined ? undefined : (MODE_NAMES[mode] as Policy['mode'] | undefined);
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
    return this.pinnedCgroups.get(cgroupId);
  }

  /** One pin a computer: the cgroup its first hook's link points at. */
  private indexPinnedCgroups(): void {
    for (const id of this.pinnedIds()) {
      const cgroupId = readCgroupLink(path.join(this.computersDir, id, HOOKS[0].name))?.cgroupId ?? 0n;
      if (cgroupId !== 0n) this.pinnedCgroups.set(cgroupId, id);
    }
  }

  /** The hostname whose DNS answer taught computer `id` the address, if any. */
  nameOf(id: string, bytes: number[]): string | undefined {
    return this.records.get(id)?.learned.get(learnedKey(bytes))?.names[0];
  }

  /** Hostname → addresses that the computer's DNS lookups taught it, unexpired. */
  learnedNames(id: string): { name: string; address: string; expiresInS: number }[] {
    const now = process.hrtime.bigint();
    const out: { name: string; address: string; expiresInS: number }[] = [];
    for (const entry of this.records.get(id)?.learned.values() ?? []) {
      if (entry.expiresNs <= now) continue;
      out.push({
        name: entry.names[0] ?? '',
        address: formatAddress(entry.bytes),
        expiresInS: Number((entry.expiresNs - now) / 1_000_000n) / 1000,
      });
    }
    return out;
  }

  /** Deletes expired learned entries (the kernel ignores them already). */
  expireLearned(): number {
    const now = process.hrtime.bigint();
    let n = 0;
    for (const record of this.records.values()) {
      for (const [k, entry] of record.learned) {
        if (entry.expiresNs > now) continue;
        bpf.mapDelete(
          entry.bytes.length === 4 ? this.obj.maps.learned_v4 : this.obj.maps.learned_v6,
          entry.key,
        );
        record.learned.delete(k);
        n++;
      }
    }
    return n;
  }

  private writeLearned(
    policyId: number,
    verdict: NonNullable<ReturnType<typeof nameVerdict>>,
    learnedId: number,
    names: string[],
    bytes: number[],
    expiresNs: bigint,
  ): LearnedEntry {
    const portSet = verdict.codes.length === 0 ? 0 : this.ensurePortSet(policyId, verdict.codes);
    const key = encodeLearnedKey(learnedId, bytes);
    bpf.mapUpdate(
      bytes.length === 4 ? this.obj.maps.learned_v4 : this.obj.maps.learned_v6,
      key,
      encodeLearned({ expiresNs, portSet, anyPortProtos: verdict.anyPortProtos }),
    );
    return { names, bytes, expiresNs, key };
  }

  /** The port set of `codes` in policy `policyId`, added (additively) when the policy has none. */
  private ensurePortSet(policyId: number, codes: number[]): number {
    const entries = this.installed.get(policyId);
    if (!entries) throw new EgressdError('NO_POLICY', `policy ${policyId} is not installed`);
    const signature = codes.join(',');
    const known = entries.portSets.get(signature);
    if (known !== undefined) return known;
    const portSet = ++entries.maxPortSet;
    const keys = Buffer.alloc(codes.length * PORT_KEY_SIZE);
    codes.forEach((code, i) => {
      writePortKey(keys, i * PORT_KEY_SIZE, policyId, portSet, Math.floor(code / 8), code & 7);
    });
    updateMany(this.obj.maps.rule_ports, keys, Buffer.alloc(codes.length, 1), PORT_KEY_SIZE, 1);
    entries.ports = Buffer.concat([entries.ports, keys]);
    entries.portSets.set(signature, portSet);
    return portSet;
  }

  private allocateLearnedId(): number {
    const id = this.nextLearnedId;
    this.nextLearnedId = this.nextLearnedId >= 0xffffffff ? 1 : this.nextLearnedId + 1;
    bpf.mapUpdate(
      this.obj.maps.config,
      encodeU32(CONFIG_SLOT.nextLearnedId),
      encodeU64(BigInt(this.nextLearnedId)),
    );
    return id;
  }

  /** Queues learned entries for deletion after a grace period. */
  private retireLearned(learned: Map<string, LearnedEntry>): void {
    if (learned.size === 0) return;
    const batch = { v4: [] as Buffer[], v6: [] as Buffer[] };
    for (const entry of learned.values()) (entry.bytes.length === 4 ? batch.v4 : batch.v6).push(entry.key);
    this.retiredLearned.push(batch);
    queueMicrotask(() => {
      this.sweep().catch(() => {});
    });
  }

  private allocatePolicyId(): number {
    let id = this.nextPolicyId;
    while (id === 0 || this.installed.has(id)) id = (id + 1) >>> 0;
    this.nextPolicyId = (id + 1) >>> 0;
    bpf.mapUpdate(
      this.obj.maps.config,
      encodeU32(CONFIG_SLOT.nextPolicyId),
      encodeU64(BigInt(this.nextPolicyId)),
    );
    return id;
  }

  private writeEntries(policyId: number, compiled: CompiledPolicy, hash: string): void {
    const byFamily = {
      4: compiled.prefixes.filter((p) => p.family === 4),
      6: compiled.prefixes.filter((p) => p.family === 6),
    };
    const portSets = new Map<string, number>();
    const codesBySet = new Map<number, number[]>();
    for (const e of compiled.ports)
      codesBySet.set(e.portSet, [...(codesBySet.get(e.portSet) ?? []), e.port * 8 + e.proto]);
    for (const [set, codes] of codesBySet) portSets.set(codes.sort((a, b) => a - b).join(','), set);
    const installed: Installed = {
      v4: Buffer.alloc(0),
      v6: Buffer.alloc(0),
      ports: Buffer.alloc(0),
      refs: 0,
      hash,
      portSets,
      maxPortSet: Math.max(0, ...codesBySet.keys()),
    };
    this.installed.set(policyId, installed);
    try {
      for (const family of [4, 6] as const) {
        const list = byFamily[family];
        const size = ruleKeySize(family);
        const keys = Buffer.alloc(list.length * size);
        const values = Buffer.alloc(list.length * RULE_VALUE_SIZE);
        list.forEach((p, i) => {
          writeRuleKey(keys, i * size, policyId, p.bytes, p.prefixLen);
          writeRuleValue(values, i * RULE_VALUE_SIZE, p.portSet, p.anyPortProtos);
        });
        installed[family === 4 ? 'v4' : 'v6'] = keys;
        updateMany(
          family === 4 ? this.obj.maps.rules_v4 : this.obj.maps.rules_v6,
          keys,
          values,
          size,
          RULE_VALUE_SIZE,
        );
      }
      const portKeys = Buffer.alloc(compiled.ports.length * PORT_KEY_SIZE);
      compiled.ports.forEach((e, i) => {
        writePortKey(portKeys, i * PORT_KEY_SIZE, policyId, e.portSet, e.port, e.proto);
      });
      installed.ports = portKeys;
      updateMany(
        this.obj.maps.rule_ports,
        portKeys,
        Buffer.alloc(compiled.ports.length, 1),
        PORT_KEY_SIZE,
        1,
      );
    } catch (err) {
      this.deleteEntries(policyId);
      if (err instanceof bpf.LibbpfError && [E2BIG, ENOSPC, ENOMEM].includes(err.errno)) {
        throw new EgressdError(
          'MAPS_FULL',
          `the rule maps are full (${err.message}): fewer rules, or fewer computers per host, are needed`,
          { cause: err },
        );
      }
      throw err;
    }
  }

  private deleteEntries(policyId: number): void {
    const entries = this.installed.get(policyId);
    if (!entries) return;
    if (this.byHash.get(entries.hash) === policyId) this.byHash.delete(entries.hash);
    deleteMany(this.obj.maps.rules_v4, entries.v4, ruleKeySize(4));
    deleteMany(this.obj.maps.rules_v6, entries.v6, ruleKeySize(6));
    deleteMany(this.obj.maps.rule_ports, entries.ports, PORT_KEY_SIZE);
    this.installed.delete(policyId);
  }

  /** One computer fewer uses `policyId`; the last one out retires it. */
  private release(policyId: number): void {
    const entries = this.installed.get(policyId);
    if (entries && --entries.refs > 0) return;
    // No new computer may pick it up from now on: its deletion is queued.
    if (entries && this.byHash.get(entries.hash) === policyId) this.byHash.delete(entries.hash);
    this.retire(policyId);
  }

  private retire(policyId: number): void {
    this.retired.push(policyId);
    queueMicrotask(() => {
      this.sweep().catch(() => {});
    });
  }

  /**
   * Deletes the entries of retired policy ids once an RCU grace period has
   * passed since they were retired. Resolves when the retired ids known at
   * the call are gone.
   */
  async sweep(): Promise<void> {
    while (this.sweeping) await this.sweeping;
    if ((this.retired.length === 0 && this.retiredLearned.length === 0) || this.closed) return;
    const batch = this.retired;
    const learned = this.retiredLearned;
    this.retired = [];
    this.retiredLearned = [];
    this.sweeping = (async () => {
      await this.waitForGracePeriod();
      for (const id of batch) this.deleteEntries(id);
      for (const b of learned) {
        for (const key of b.v4) bpf.mapDelete(this.obj.maps.learned_v4, key);
        for (const key of b.v6) bpf.mapDelete(this.obj.maps.learned_v6, key);
      }
    })();
    try {
      await this.sweeping;
    } finally {
      this.sweeping = undefined;
    }
  }

  private async waitForGracePeriod(): Promise<void> {
    // Updating a map-in-map makes the kernel wait for synchronize_rcu().
    const inner = encodeU32(this.obj.maps.barrier_inner);
    await bpf.mapUpdateAsync(this.obj.maps.rcu_barrier, encodeU32(0), inner);
  }

  /** Detaches every hook from the computer's cgroup and removes its pins. Idempotent. */
  detach(id: string): void {
    this.checkId(id);
    const dir = path.join(this.computersDir, id);
    if (!existsSync(dir)) return;
    let oldPolicyId = 0;
    const linked = this.linkedCgroup(id);
    if (linked && this.pinnedCgroups.get(linked.cgroupId) === id) this.pinnedCgroups.delete(linked.cgroupId);
    // The guard refuses the cgroup before its own hooks go.
    this.guard.ungovern(this.records.get(id)?.cgroupId ?? 0n);
    this.guard.ungovern(linked?.cgroupId ?? 0n);
    if (linked && linked.cgroupId !== 0n) {
      const value = Buffer.alloc(LAYOUT.egress_computer.size);
      if (bpf.mapLookup(this.obj.maps.computers, encodeCgroupKey(linked.cgroupId), value)) {
        oldPolicyId = decodeComputer(value).policyId;
      }
    }
    // Connect and sendmsg hooks first, sock_create last: the reverse of attach.
    for (const hook of [...HOOKS].reverse()) unpinCgroupLink(path.join(dir, hook.name));
    rmdirSync(dir);
    if (oldPolicyId) this.release(oldPolicyId);
    const record = this.records.get(id);
    if (record) this.retireLearned(record.learned);
    this.records.delete(id);
  }

  /** The cgroup id this process attached (or adopted) the computer at; undefined when it holds none. */
  attachedCgroupId(id: string): bigint | undefined {
    return this.records.get(id)?.cgroupId;
  }

  /** Drops governed cgroup ids that no pinned computer is attached to (cgroups gone while no agent ran). */
  pruneGoverned(): number {
    const keep = new Set<bigint>();
    for (const id of this.pinnedIds()) {
      const cgroupId = this.records.get(id)?.cgroupId ?? this.linkedCgroup(id)?.cgroupId ?? 0n;
      if (cgroupId !== 0n) keep.add(cgroupId);
    }
    return this.guard.prune(keep);
  }

  /** The ids of every computer with pins (cheap: no syscall per hook, unlike list()). */
  pinnedIds(): string[] {
    return readdirSync(this.computersDir).sort();
  }

  /** Every computer with pins, with what the kernel holds for it. */
  list(): ComputerState[] {
    return this.pinnedIds()
      .map((id) => this.state(id))
      .filter((s) => s !== undefined);
  }

  /** What the kernel holds for one computer, or undefined when it has no pins. */
  state(id: string): ComputerState | undefined {
    const linked = this.linkedCgroup(id);
    if (!linked) return undefined;
    const state: ComputerState = {
      id,
      cgroupId: linked.cgroupId,
      hooks: linked.hooks,
      mode: 'unknown',
      version: 0n,
      policyId: 0,
      learnedId: 0,
      dnsPort: 0,
      flags: 0,
    };
    const value = Buffer.alloc(LAYOUT.egress_computer.size);
    if (
      linked.cgroupId !== 0n &&
      bpf.mapLookup(this.obj.maps.computers, encodeCgroupKey(linked.cgroupId), value)
    ) {
      const v = decodeComputer(value);
      state.mode = MODE_NAMES[v.mode] ?? 'unknown';
      state.version = v.version;
      state.policyId = v.policyId;
      state.learnedId = v.learnedId;
      state.dnsPort = v.dnsPort;
      state.flags = v.flags;
    }
    return state;
  }

  /**
   * Where the proxy can be reached: the port range computers' proxy ports
   * come from, and the addresses the hooks use for sockets in other network
   * namespaces than the agent's (none: DNS refused there).
   */
  setDnsConfig(ports: [number, number], proxyV4?: string, proxyV6?: string): void {
    const config = this.obj.maps.config;
    bpf.mapUpdate(
      config,
      encodeU32(CONFIG_SLOT.dnsPorts),
      encodeU64(BigInt(ports[0]) | (BigInt(ports[1]) << 16n)),
    );
    const v4 = Buffer.alloc(8);
    if (proxyV4) Buffer.from(ipaddr.IPv4.parse(proxyV4).toByteArray()).copy(v4, 0);
    bpf.mapUpdate(config, encodeU32(CONFIG_SLOT.proxyV4), v4);
    const v6 = Buffer.from(proxyV6 ? ipaddr.IPv6.parse(proxyV6).toByteArray() : Array(16).fill(0));
    bpf.mapUpdate(config, encodeU32(CONFIG_SLOT.proxyV6Hi), v6.subarray(0, 8));
    bpf.mapUpdate(config, encodeU32(CONFIG_SLOT.proxyV6Lo), v6.subarray(8, 16));
  }

  /** Kernel memory of each map, from /proc/self/fdinfo (memlock). */
  mapMemory(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [name, fd] of Object.entries(this.obj.maps)) {
      try {
        const m = /^memlock:\s+(\d+)/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
        if (m) out[name] = Number(m[1]);
      } catch {}
    }
    return out;
  }

  /** Entries this process installed, from its own index (cheap; for metrics). */
  installedEntryCounts(): { rules_v4: number; rules_v6: number; rule_ports: number; learned: number } {
    let v4 = 0;
    let v6 = 0;
    let ports = 0;
    for (const e of this.installed.values()) {
      v4 += e.v4.length / ruleKeySize(4);
      v6 += e.v6.length / ruleKeySize(6);
      ports += e.ports.length / PORT_KEY_SIZE;
    }
    let learned = 0;
    for (const r of this.records.values()) learned += r.learned.size;
    return { rules_v4: v4, rules_v6: v6, rule_ports: ports, learned };
  }

  /** Entries in the rule maps, counted by walking them (diagnostics and tests; O(entries)). */
  ruleEntryCounts(): { v4: number; v6: number; ports: number } {
    return {
      v4: allKeys(this.obj.maps.rules_v4, ruleKeySize(4)).length,
      v6: allKeys(this.obj.maps.rules_v6, ruleKeySize(6)).length,
      ports: allKeys(this.obj.maps.rule_ports, PORT_KEY_SIZE).length,
    };
  }

  /** Replaces the internal CIDRs (reachable in every mode): new ones first, then removals. */
  setInternalCidrs(cidrs: string[]): void {
    const wanted = new Map<string, Buffer>();
    for (const cidr of cidrs) {
      const host = parseHost(cidr);
      if (host.kind !== 'cidr') {
        throw new EgressdError(
          'BAD_INTERNAL_CIDR',
          `internal CIDR "${cidr}" is not an address or CIDR block`,
        );
      }
      const key = encodeInternalKey(host.bytes, host.prefixLen);
      wanted.set(`${host.family}:${key.toString('hex')}`, key);
    }
    for (const family of [4, 6] as const) {
      const fd = family === 4 ? this.obj.maps.internal_v4 : this.obj.maps.internal_v6;
      const size = family === 4 ? LAYOUT.egress_internal_v4.size : LAYOUT.egress_internal_v6.size;
      const existing = allKeys(fd, size);
      for (const [k, key] of wanted) if (k.startsWith(`${family}:`)) bpf.mapUpdate(fd, key, Buffer.from([1]));
      for (const key of existing) if (!wanted.has(`${family}:${key.toString('hex')}`)) bpf.mapDelete(fd, key);
    }
  }

  /** Rebuilds the index of installed entries from the maps; ids no computer uses are retired. */
  private rebuildIndex(): void {
    const live = new Map<number, number>();
    const liveLearned = new Set<number>();
    const value = Buffer.alloc(LAYOUT.egress_computer.size);
    for (const key of allKeys(this.obj.maps.computers, 8)) {
      if (!bpf.mapLookup(this.obj.maps.computers, key, value)) continue;
      const v = decodeComputer(value);
      live.set(v.policyId, (live.get(v.policyId) ?? 0) + 1);
      if (v.learnedId) liveLearned.add(v.learnedId);
    }
    const grouped = new Map<number, { v4: Buffer[]; v6: Buffer[]; ports: Buffer[] }>();
    const group = (id: number) => {
      let g = grouped.get(id);
      if (!g) {
        g = { v4: [], v6: [], ports: [] };
        grouped.set(id, g);
      }
      return g;
    };
    for (const key of allKeys(this.obj.maps.rules_v4, ruleKeySize(4)))
      group(readRuleKeyPolicyId(key)).v4.push(key);
    for (const key of allKeys(this.obj.maps.rules_v6, ruleKeySize(6)))
      group(readRuleKeyPolicyId(key)).v6.push(key);
    for (const key of allKeys(this.obj.maps.rule_ports, PORT_KEY_SIZE))
      group(readPortKeyPolicyId(key)).ports.push(key);
    for (const [id, g] of grouped) {
      // Adopted entries are not shared with new policies (their hash is unknown), only released.
      this.installed.set(id, {
        v4: Buffer.concat(g.v4),
        v6: Buffer.concat(g.v6),
        ports: Buffer.concat(g.ports),
        refs: live.get(id) ?? 0,
        hash: '',
        portSets: new Map(),
        maxPortSet: Math.max(0, ...g.ports.map(readPortKeyPortSet)),
      });
      if (!live.has(id)) this.retired.push(id);
      if (id >= this.nextPolicyId) this.nextPolicyId = id + 1;
    }
    // Learned entries of live computers wait for their computer's record (adoptRecord); others go.
    const stale = { v4: [] as Buffer[], v6: [] as Buffer[] };
    for (const [family, fd, size] of [
      [4, this.obj.maps.learned_v4, LAYOUT.egress_learned_v4.size],
      [6, this.obj.maps.learned_v6, LAYOUT.egress_learned_v6.size],
    ] as const) {
      for (const key of allKeys(fd, size)) {
        const learnedId = key.readUInt32LE(0);
        if (!liveLearned.has(learnedId)) {
          (family === 4 ? stale.v4 : stale.v6).push(key);
          continue;
        }
        const v = Buffer.alloc(LAYOUT.egress_learned.size);
        if (!bpf.mapLookup(fd, key, v)) continue;
        const entries = this.adoptedLearned.get(learnedId) ?? [];
        entries.push({ names: [], bytes: [...key.subarray(4)], expiresNs: decodeLearned(v).expiresNs, key });
        this.adoptedLearned.set(learnedId, entries);
        if (learnedId >= this.nextLearnedId) this.nextLearnedId = learnedId + 1;
      }
    }
    if (stale.v4.length + stale.v6.length > 0) this.retiredLearned.push(stale);
  }

  /**
   * Whether computer `id` has learned entries that an earlier agent left and
   * whose names this process does not know yet: the kernel keeps addresses,
   * not names, and a policy change needs the names to carry them over.
   * `cgroup` is where attach() will look (a stat, not the nine pins).
   */
  awaitsLearnedNames(id: string, cgroup: string): boolean {
    if (this.adoptedLearned.size === 0 || this.records.has(id)) return false;
    let cgroupId: bigint;
    try {
      cgroupId = resolveCgroup(cgroup, this.cgroupRoot).id;
    } catch {
      return false; // attach() says what is wrong with the cgroup
    }
    const value = this.storage(cgroupId);
    return value !== undefined && this.adoptedLearned.has(value.learnedId);
  }

  /** Takes over a computer attached by an earlier agent, with its learned entries (named by `names`), without rewriting anything. */
  private adoptRecord(
    id: string,
    cgroupId: bigint,
    policy: Policy,
    value: ComputerValue,
    names: readonly LearnedName[] = [],
  ): void {
    const namesOf = new Map<string, string[]>();
    for (const { name, address } of names) {
      let key: string;
      try {
        key = learnedKey(ipaddr.process(address).toByteArray());
      } catch {
        continue; // not an address: nothing to name
      }
      namesOf.set(key, [...(namesOf.get(key) ?? []), name]);
    }
    const learned = new Map<string, LearnedEntry>();
    for (const entry of this.adoptedLearned.get(value.learnedId) ?? []) {
      const key = learnedKey(entry.bytes);
      learned.set(key, entry.names.length === 0 ? { ...entry, names: namesOf.get(key) ?? [] } : entry);
    }
    this.adoptedLearned.delete(value.learnedId);
    this.records.set(id, {
      cgroupId,
      policyId: value.policyId,
      learnedId: value.learnedId,
      compiled: this.compileCached(policy, false).cached.compiled,
      dns: dnsOf(policy),
      learned,
      verdicts: new Map(),
    });
  }

  private checkId(id: string): void {
    if (!COMPUTER_ID_PATTERN.test(id)) {
      throw new EgressdError(
        'BAD_COMPUTER_ID',
        `computer id "${id}" must be 1 to 128 characters of letters, digits, ".", "_" or "-", starting with a letter or digit`,
      );
    }
  }

  /** Closes this process's file descriptors; pins, links and policies stay in force. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    closeLoaded(this.obj);
  }
}

/** What a computer's record keeps of its compiled policy: the mode and what name verdicts need (not the prefixes). */
function forNames(compiled: CompiledPolicy): CompiledPolicy {
  return compiled.names.length === 0
    ? { mode: compiled.mode, prefixes: [], ports: [], names: [] }
    : { mode: compiled.mode, prefixes: [], ports: compiled.ports, names: compiled.names };
}

function cachedVerdict(record: ComputerRecord, names: string[]): ReturnType<typeof nameVerdict> {
  const key = names.join(' ');
  if (!record.verdicts.has(key)) {
    if (record.verdicts.size > 10_000) record.verdicts.clear();
    record.verdicts.set(key, nameVerdict(record.compiled, names));
  }
  return record.verdicts.get(key);
}

/** Identifies compiled entries independently of their policy id. */
function contentHash(compiled: CompiledPolicy): string {
  // One flat buffer, hashed once: per prefix its family, bytes, length, protocols and port set.
  const out = Buffer.alloc(compiled.prefixes.length * 24 + compiled.ports.length * 8);
  let o = 0;
  for (const p of compiled.prefixes) {
    out[o++] = p.family;
    for (const b of p.bytes) out[o++] = b;
    out[o++] = p.prefixLen;
    out[o++] = p.anyPortProtos;
    o = out.writeUInt32LE(p.portSet, o);
  }
  for (const e of compiled.ports) {
    o = out.writeUInt32LE(e.portSet, o);
    o = out.writeUInt16LE(e.port, o);
    out[o++] = e.proto;
  }
  return createHash('sha256').update(out.subarray(0, o)).digest('base64');
}

/** Every key of a map (get_next_key walk); for start-up and small maps. */
function allKeys(fd: number, size: number): Buffer[] {
  const keys: Buffer[] = [];
  let prev: Buffer | null = null;
  for (;;) {
    const next = Buffer.alloc(size);
    if (!bpf.mapNextKey(fd, prev, next)) return keys;
    keys.push(next);
    prev = next;
  }
}

let batchUpdateWorks = true;

/** Inserts `keys`/`values` (packed, fixed sizes) with one batch call where the kernel allows it. */
function updateMany(fd: number, keys: Buffer, values: Buffer, keySize: number, valueSize: number): void {
  const count = keys.length / keySize;
  if (count === 0) return;
  if (batchUpdateWorks) {
    try {
      bpf.mapUpdateBatch(fd, keys, values, count);
      return;
    } catch (err) {
      if (!(err instanceof bpf.LibbpfError && [EINVAL, EOPNOTSUPP, bpf.ENOTSUPP].includes(err.errno)))
        throw err;
      batchUpdateWorks = false;
    }
  }
  for (let i = 0; i < count; i++) {
    bpf.mapUpdate(
      fd,
      keys.subarray(i * keySize, (i + 1) * keySize),
      values.subarray(i * valueSize, (i + 1) * valueSize),
    );
  }
}

function deleteMany(fd: number, keys: Buffer, keySize: number): void {
  for (let i = 0; i < keys.length / keySize; i++)
    bpf.mapDelete(fd, keys.subarray(i * keySize, (i + 1) * keySize));
}
