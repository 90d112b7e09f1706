/**
 * The rule maps (rules_v4, rules_v6, rule_ports) as a table of installed
 * policy ids. A policy's entries are written under a fresh id and never
 * changed in place (port sets aside, which only grow); computers whose
 * compiled entries are identical share one id, counted by reference. The
 * last computer out retires the id, and its entries are deleted after an
 * RCU grace period (reclaimer.ts).
 */
import { constants } from 'node:os';
import { EgressdError } from '../../policy/errors.js';
import type { Policy } from '../../policy/types.js';
import {
  CONFIG_SLOT,
  decodePortKey,
  decodeRuleKey,
  encodeMarks,
  encodePortKeys,
  encodeRules,
  PORT_KEY_SIZE,
  RULE_VALUE_SIZE,
  ruleKeySize,
} from './abi.js';
import { type CompiledPolicy, compile } from './compile.js';
import { CompileCache } from './compile-cache.js';
import * as bpf from './libbpf.js';
import type { LoadedObject } from './loader.js';
import { allKeys, deleteMany, readConfig, updateMany, writeConfig } from './maps.js';
import type { Reclaimer } from './reclaimer.js';

const { E2BIG, ENOMEM, ENOSPC } = constants.errno;

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

type RuleMaps = Pick<LoadedObject['maps'], 'rules_v4' | 'rules_v6' | 'rule_ports' | 'config'>;

export class PolicyTable {
  private readonly installed = new Map<number, Installed>();
  /** Content hash → policy id: computers with the same rules share one set of entries. */
  private readonly byHash = new Map<string, number>();
  private readonly compiled = new CompileCache();
  /** The next id to try; kept in "config" so that a restarted agent does not reuse a retired one early. */
  private next: number;

  constructor(
    private readonly maps: RuleMaps,
    private readonly reclaimer: Reclaimer,
  ) {
    this.next = Math.max(1, Number(readConfig(maps.config, CONFIG_SLOT.nextPolicyId)));
  }

  /**
   * Indexes the entries an earlier agent left, given how many computers use
   * each policy id (`refs`); ids no computer uses are retired. Adopted
   * entries are not shared with new policies (their hash is unknown), only
   * released.
   */
  adopt(refs: ReadonlyMap<number, number>): void {
    const grouped = new Map<number, { v4: Buffer[]; v6: Buffer[]; ports: Buffer[] }>();
    const group = (id: number) => {
      let g = grouped.get(id);
      if (!g) {
        g = { v4: [], v6: [], ports: [] };
        grouped.set(id, g);
      }
      return g;
    };
    for (const key of allKeys(this.maps.rules_v4, ruleKeySize(4)))
      group(decodeRuleKey(key).policyId).v4.push(key);
    for (const key of allKeys(this.maps.rules_v6, ruleKeySize(6)))
      group(decodeRuleKey(key).policyId).v6.push(key);
    for (const key of allKeys(this.maps.rule_ports, PORT_KEY_SIZE))
      group(decodePortKey(key).policyId).ports.push(key);
    for (const [id, g] of grouped) {
      this.installed.set(id, {
        v4: Buffer.concat(g.v4),
        v6: Buffer.concat(g.v6),
        ports: Buffer.concat(g.ports),
        refs: refs.get(id) ?? 0,
        hash: '',
        portSets: new Map(),
        maxPortSet: Math.max(0, ...g.ports.map((k) => decodePortKey(k).portSet)),
      });
      if (!refs.has(id)) this.reclaimer.retire(() => this.deleteEntries(id), false);
      if (id >= this.next) this.next = id + 1;
    }
  }

  /**
   * One more computer uses `policy`: the id of its entries (written now
   * unless identical ones are installed; 0 when it has none) and its
   * compiled form for name verdicts. Pair with release().
   */
  acquire(policy: Policy): { policyId: number; compiled: CompiledPolicy } {
    const { cached, full } = this.compiled.get(policy, (c) => c.hasEntries && !this.byHash.has(c.hash));
    if (!cached.hasEntries) return { policyId: 0, compiled: cached.compiled };
    let policyId = this.byHash.get(cached.hash);
    if (policyId === undefined) {
      policyId = this.allocate();
      this.writeEntries(policyId, full ?? compile(policy), cached.hash);
      this.byHash.set(cached.hash, policyId);
    }
    this.installed.get(policyId)!.refs++;
    return { policyId, compiled: cached.compiled };
  }

  /** The policy's compiled form for name verdicts, without installing anything (an adopted computer). */
  compiledFor(policy: Policy): CompiledPolicy {
    return this.compiled.get(policy).cached.compiled;
  }

  /** One computer fewer uses `policyId`; the last one out retires it. */
  release(policyId: number): void {
    const entries = this.installed.get(policyId);
    if (entries && --entries.refs > 0) return;
    // No new computer may pick it up from now on: its deletion is queued.
    if (entries && this.byHash.get(entries.hash) === policyId) this.byHash.delete(entries.hash);
    this.reclaimer.retire(() => this.deleteEntries(policyId));
  }

  /** The port set of `codes` (port * 8 + PROTO bit) in policy `policyId`, added (additively) when the policy has none. */
  portSet(policyId: number, codes: number[]): number {
    const entries = this.installed.get(policyId);
    if (!entries) throw new EgressdError('NO_POLICY', `policy ${policyId} is not installed`);
    const signature = codes.join(',');
    const known = entries.portSets.get(signature);
    if (known !== undefined) return known;
    const portSet = ++entries.maxPortSet;
    const keys = encodePortKeys(
      policyId,
      codes.map((code) => ({ portSet, port: Math.floor(code / 8), proto: code & 7 })),
    );
    updateMany(this.maps.rule_ports, keys, encodeMarks(codes.length), PORT_KEY_SIZE, 1);
    entries.ports = Buffer.concat([entries.ports, keys]);
    entries.portSets.set(signature, portSet);
    return portSet;
  }

  /** Entries this process installed, from its own index (cheap; for metrics). */
  entryCounts(): { rules_v4: number; rules_v6: number; rule_ports: number } {
    let v4 = 0;
    let v6 = 0;
    let ports = 0;
    for (const e of this.installed.values()) {
      v4 += e.v4.length / ruleKeySize(4);
      v6 += e.v6.length / ruleKeySize(6);
      ports += e.ports.length / PORT_KEY_SIZE;
    }
    return { rules_v4: v4, rules_v6: v6, rule_ports: ports };
  }

  /** Entries in the rule maps, counted by walking them (diagnostics and tests; O(entries)). */
  countMapEntries(): { v4: number; v6: number; ports: number } {
    return {
      v4: allKeys(this.maps.rules_v4, ruleKeySize(4)).length,
      v6: allKeys(this.maps.rules_v6, ruleKeySize(6)).length,
      ports: allKeys(this.maps.rule_ports, PORT_KEY_SIZE).length,
    };
  }

  private allocate(): number {
    let id = this.next;
    while (id === 0 || this.installed.has(id)) id = (id + 1) >>> 0;
    this.next = (id + 1) >>> 0;
    writeConfig(this.maps.config, CONFIG_SLOT.nextPolicyId, BigInt(this.next));
    return id;
  }

  private writeEntries(policyId: number, compiled: CompiledPolicy, hash: string): void {
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
        const { keys, values } = encodeRules(
          policyId,
          family,
          compiled.prefixes.filter((p) => p.family === family),
        );
        installed[family === 4 ? 'v4' : 'v6'] = keys;
        updateMany(
          family === 4 ? this.maps.rules_v4 : this.maps.rules_v6,
          keys,
          values,
          ruleKeySize(family),
          RULE_VALUE_SIZE,
        );
      }
      installed.ports = encodePortKeys(policyId, compiled.ports);
      updateMany(this.maps.rule_ports, installed.ports, encodeMarks(compiled.ports.length), PORT_KEY_SIZE, 1);
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
    deleteMany(this.maps.rules_v4, entries.v4, ruleKeySize(4));
    deleteMany(this.maps.rules_v6, entries.v6, ruleKeySize(6));
    deleteMany(this.maps.rule_ports, entries.ports, PORT_KEY_SIZE);
    this.installed.delete(policyId);
  }
}
