/**
 * The "computers" cgroup storage (one value per attached cgroup, written
 * whole, so that mode, policy id and learned id switch together) and what
 * this process knows of each computer it attached or adopted.
 */
import { EgressdError } from '../../policy/errors.js';
import { COMPUTER_ID_PATTERN, type DnsMode, type Policy } from '../../policy/types.js';
import {
  CGROUP_KEY_SIZE,
  type ComputerValue,
  decodeCgroupKey,
  decodeComputer,
  decodeMode,
  encodeCgroupKey,
  encodeComputer,
  FLAG,
  type KernelMode,
  LAYOUT,
} from './abi.js';
import { type CompiledPolicy, nameVerdict } from './compile.js';
import type { Verdict } from './learned-table.js';
import * as bpf from './libbpf.js';
import type { HookName } from './loader.js';
import { allKeys, lookup } from './maps.js';

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
export interface ComputerRecord {
  cgroupId: bigint;
  policyId: number;
  learnedId: number;
  /** Its policy as compiled for name verdicts (no prefixes). */
  compiled: CompiledPolicy;
  /** What the DNS proxy resolves for the computer (the policy's dns, or its default). */
  dns: DnsMode;
  /** The policy is in audit: the proxy forwards what it would answer NXDOMAIN, and reports it. */
  audit: boolean;
  /** Name chain → its verdict under `compiled` (a record is replaced on every install). */
  verdicts: Map<string, Verdict | undefined>;
}

/** Name chains' verdicts cached per record at most (then the cache starts over). */
const MAX_VERDICTS = 10_000;

export class Computers {
  private readonly records = new Map<string, ComputerRecord>();

  /**
   * `fd`: the "computers" cgroup storage; `mirrorFd`: "computer_values", the
   * same values by cgroup id for the name check's sk_msg program (which no
   * cgroup runs), written after each storage write and deleted on detach.
   */
  constructor(
    private readonly fd: number,
    private readonly mirrorFd: number,
  ) {}

  /** The storage value at a cgroup; undefined when no programs are attached there. */
  value(cgroupId: bigint): ComputerValue | undefined {
    const value = lookup(this.fd, encodeCgroupKey(cgroupId), LAYOUT.egress_computer.size);
    return value && decodeComputer(value);
  }

  /** Switches the computer at `value.cgroupId` to `value` in one write. */
  write(value: ComputerValue): void {
    bpf.mapUpdate(this.fd, encodeCgroupKey(value.cgroupId), encodeComputer(value));
    bpf.mapUpdate(this.mirrorFd, encodeCgroupKey(value.cgroupId), encodeComputer(value));
  }

  /** Removes the mirror of a detached computer's value (0n: nothing). */
  unmirror(cgroupId: bigint): void {
    if (cgroupId !== 0n) bpf.mapDelete(this.mirrorFd, encodeCgroupKey(cgroupId));
  }

  /** Removes mirrored values whose cgroup is not in `keep` (cgroups gone while no agent ran). */
  pruneMirror(keep: ReadonlySet<bigint>): void {
    for (const key of allKeys(this.mirrorFd, CGROUP_KEY_SIZE)) {
      if (!keep.has(decodeCgroupKey(key))) bpf.mapDelete(this.mirrorFd, key);
    }
  }

  /** Every storage value in the map (start-up). */
  values(): ComputerValue[] {
    return allKeys(this.fd, CGROUP_KEY_SIZE).flatMap((key) => {
      const value = lookup(this.fd, key, LAYOUT.egress_computer.size);
      return value ? [decodeComputer(value)] : [];
    });
  }

  record(id: string): ComputerRecord | undefined {
    return this.records.get(id);
  }

  remember(id: string, record: Omit<ComputerRecord, 'verdicts'>): void {
    this.records.set(id, { ...record, verdicts: new Map() });
  }

  forget(id: string): void {
    this.records.delete(id);
  }

  /** What the kernel holds for a computer linked as `linked` says (all zero when its cgroup is gone). */
  state(id: string, linked: { cgroupId: bigint; hooks: HookName[] }): ComputerState {
    const v = linked.cgroupId !== 0n ? this.value(linked.cgroupId) : undefined;
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

  /** The computer this process attached or adopted at `cgroupId`. */
  idAt(cgroupId: bigint): string | undefined {
    for (const [id, record] of this.records) if (record.cgroupId === cgroupId) return id;
    return undefined;
  }
}

/** What the record's policy says of a name chain (see nameVerdict), cached in the record. */
export function cachedVerdict(record: ComputerRecord, names: string[]): Verdict | undefined {
  const key = names.join(' ');
  if (!record.verdicts.has(key)) {
    if (record.verdicts.size > MAX_VERDICTS) record.verdicts.clear();
    record.verdicts.set(key, nameVerdict(record.compiled, names));
  }
  return record.verdicts.get(key);
}

export function checkComputerId(id: string): void {
  if (!COMPUTER_ID_PATTERN.test(id)) {
    throw new EgressdError(
      'BAD_COMPUTER_ID',
      `computer id "${id}" must be 1 to 128 characters of letters, digits, ".", "_" or "-", starting with a letter or digit`,
    );
  }
}

/** The EGRESS_FLAG_* bits of a computer's storage value under `policy`, observing as the agent's --observe says. */
export function flagsOf(policy: Policy, observe: 'all' | 'audit' | 'off' = 'all'): number {
  const observed = observe === 'all' || (observe === 'audit' && policy.audit === true);
  return (policy.audit ? FLAG.audit : 0) | (observed ? FLAG.observe : 0);
}
