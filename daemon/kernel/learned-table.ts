/**
 * The learned maps (learned_v4, learned_v6): what computers' DNS answers
 * taught them, by learned id. A learned id belongs to one computer and one
 * policy generation, never shared: a new policy gets a fresh id, the
 * addresses it still names are copied there, and the old id's entries are
 * deleted after an RCU grace period (reclaimer.ts). Entries carry the names
 * they were learned for (the kernel keeps only addresses) so that a policy
 * change can tell which ones it still names.
 *
 * An expired entry opens no new connection (the programs compare its expiry)
 * but stays LEARNED_GRACE_MS longer: a revocation pass counts it, so that a
 * connection made while the address was fresh is not closed by a policy
 * change that still names it (applications use an address past its TTL).
 */
import ipaddr from 'ipaddr.js';
import {
  CONFIG_SLOT,
  decodeLearned,
  decodeLearnedKey,
  decodeLearnedName,
  encodeLearned,
  encodeLearnedKey,
  encodeLearnedName,
  encodeRuleValue,
  LAYOUT,
  LEARNED_FLAG,
  learnedKeySize,
} from './abi.js';
import { type CompiledPolicy, type NameVerdict, nameVerdict } from './compile.js';
import * as bpf from './libbpf.js';
import type { LoadedObject } from './loader.js';
import { allKeys, lookup, readConfig, writeConfig } from './maps.js';
import type { PolicyTable } from './policy-table.js';
import type { Reclaimer } from './reclaimer.js';

/** How long an expired learned entry is kept (and carried over to a new policy) for revocation passes. */
export const LEARNED_GRACE_MS = 10 * 60_000;
const GRACE_NS = BigInt(LEARNED_GRACE_MS) * 1_000_000n;

/** A hostname and one address it resolved to (as the agent publishes them to Redis). */
export interface LearnedName {
  name: string;
  address: string;
}

export type Verdict = NameVerdict;

interface LearnedEntry {
  /** The DNS chain it was learned from (question first); [] when adopted from pins. */
  names: string[];
  bytes: number[];
  expiresNs: bigint;
  /** Its key in learned_v4/learned_v6. */
  key: Buffer;
  /** Its keys in learned_names (a name-bound address): the chain's names and the wildcards over them. */
  nameKeys: Buffer[];
}

/** Names one learned address keeps at most: the newest answer's chain first. */
const MAX_NAMES_PER_ADDRESS = 8;

function mergeNames(newest: string[], older: readonly string[]): string[] {
  return [...newest, ...older.filter((n) => !newest.includes(n))].slice(0, MAX_NAMES_PER_ADDRESS);
}

function addressKey(bytes: number[]): string {
  return bytes.join('.');
}

type LearnedMaps = Pick<LoadedObject['maps'], 'learned_v4' | 'learned_v6' | 'learned_names' | 'config'>;

export class LearnedTable {
  /** Learned id → addressKey(bytes) → entry. Never holds id 0 (none). */
  private readonly byId = new Map<number, Map<string, LearnedEntry>>();
  /** Ids found in the maps at start whose names this process does not know yet (see nameAdopted). */
  private readonly unnamed = new Set<number>();
  private next: number;

  constructor(
    private readonly maps: LearnedMaps,
    private readonly policies: PolicyTable,
    private readonly reclaimer: Reclaimer,
  ) {
    this.next = Math.max(1, Number(readConfig(maps.config, CONFIG_SLOT.nextLearnedId)));
  }

  /**
   * Indexes the entries an earlier agent left: those of `live` learned ids
   * (computers' storage values) wait for their names; the others go.
   */
  adopt(live: ReadonlySet<number>): void {
    const stale: { fd: number; key: Buffer }[] = [];
    for (const [family, fd] of [
      [4, this.maps.learned_v4],
      [6, this.maps.learned_v6],
    ] as const) {
      for (const key of allKeys(fd, learnedKeySize(family))) {
        const { learnedId, bytes } = decodeLearnedKey(key);
        if (!live.has(learnedId)) {
          stale.push({ fd, key });
          continue;
        }
        const value = lookup(fd, key, LAYOUT.egress_learned.size);
        if (!value) continue;
        this.entries(learnedId).set(addressKey(bytes), {
          names: [],
          bytes,
          expiresNs: decodeLearned(value).expiresNs,
          key,
          nameKeys: [],
        });
        this.unnamed.add(learnedId);
        if (learnedId >= this.next) this.next = learnedId + 1;
      }
    }
    for (const key of allKeys(this.maps.learned_names, LAYOUT.egress_learned_name.size)) {
      const { learnedId, bytes } = decodeLearnedName(key);
      const entry = live.has(learnedId) ? this.byId.get(learnedId)?.get(addressKey(bytes)) : undefined;
      if (entry) entry.nameKeys.push(key);
      else stale.push({ fd: this.maps.learned_names, key });
    }
    if (stale.length > 0) this.reclaimer.retire(() => deleteKeys(stale), false);
  }

  /** Whether some adopted entries still wait for their names. */
  awaitsAnyNames(): boolean {
    return this.unnamed.size > 0;
  }

  /** Whether learned id `learnedId` has adopted entries whose names this process does not know yet. */
  awaitsNames(learnedId: number): boolean {
    return this.unnamed.has(learnedId);
  }

  /** Gives adopted entries of `learnedId` the names that resolved to their addresses (from Redis). */
  nameAdopted(learnedId: number, names: readonly LearnedName[]): void {
    if (!this.unnamed.delete(learnedId)) return;
    const namesOf = new Map<string, string[]>();
    for (const { name, address } of names) {
      let key: string;
      try {
        key = addressKey(ipaddr.process(address).toByteArray());
      } catch {
        continue; // not an address: nothing to name
      }
      namesOf.set(key, [...(namesOf.get(key) ?? []), name]);
    }
    for (const [key, entry] of this.byId.get(learnedId) ?? []) {
      if (entry.names.length === 0) entry.names = namesOf.get(key) ?? [];
    }
  }

  /** A fresh learned id (kept in "config" across restarts). */
  allocate(): number {
    const id = this.next;
    this.next = this.next >= 0xffffffff ? 1 : this.next + 1;
    writeConfig(this.maps.config, CONFIG_SLOT.nextLearnedId, BigInt(this.next));
    return id;
  }

  /**
   * Copies the named entries of `from` (unexpired, or within the grace) that
   * `compiled` (the policy of `policyId`) still names to learned id `to`.
   */
  carryOver(from: number, to: number, policyId: number, compiled: CompiledPolicy): void {
    const now = process.hrtime.bigint();
    for (const entry of this.byId.get(from)?.values() ?? []) {
      if (entry.expiresNs + GRACE_NS <= now || entry.names.length === 0) continue;
      const verdict = nameVerdict(compiled, entry.names);
      if (verdict) this.write(to, policyId, verdict, entry.names, entry.bytes, entry.expiresNs);
    }
  }

  /**
   * Records what a DNS answer taught learned id `learnedId` (see
   * Enforcer.learn); `verdictOf` answers for a name chain under the
   * computer's policy (`policyId`). Undefined when it lists none of `names`.
   * An address learned for the same names with at most a second less to
   * live is not written again (repeated lookups of one name); an address
   * that other names taught keeps them, and the later expiry.
   */
  learn(
    learnedId: number,
    policyId: number,
    names: string[],
    addresses: number[][],
    ttlSeconds: number,
    verdictOf: (names: string[]) => Verdict | undefined,
  ): { lifetimeS: number; written: number[][] } | undefined {
    const verdict = verdictOf(names);
    if (!verdict) return undefined;
    const learned = this.entries(learnedId);
    const now = process.hrtime.bigint();
    const wanted = now + BigInt(Math.round(ttlSeconds * 1e9));
    let until = wanted;
    const written: number[][] = [];
    for (const bytes of addresses) {
      const known = learned.get(addressKey(bytes));
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
      const mergedVerdict = merged === names ? verdict : verdictOf(merged);
      const expiresNs = live !== undefined && live.expiresNs > wanted ? live.expiresNs : wanted;
      this.write(learnedId, policyId, mergedVerdict ?? verdict, merged, bytes, expiresNs);
      written.push(bytes);
    }
    return { lifetimeS: Number(until - now) / 1e9, written };
  }

  /** Queues every entry of `learnedId` for deletion after a grace period; 0: nothing. */
  retire(learnedId: number): void {
    const learned = this.byId.get(learnedId);
    this.byId.delete(learnedId);
    this.unnamed.delete(learnedId);
    if (!learned || learned.size === 0) return;
    const keys = [...learned.values()].flatMap((e) => [
      { fd: this.fdOf(e.bytes), key: e.key },
      ...e.nameKeys.map((key) => ({ fd: this.maps.learned_names, key })),
    ]);
    this.reclaimer.retire(() => deleteKeys(keys));
  }

  /** Deletes entries expired for longer than `graceMs`, adopted ones still unnamed aside. */
  expire(graceMs = LEARNED_GRACE_MS): number {
    const now = process.hrtime.bigint() - BigInt(graceMs) * 1_000_000n;
    let n = 0;
    for (const [learnedId, learned] of this.byId) {
      if (this.unnamed.has(learnedId)) continue;
      for (const [k, entry] of learned) {
        if (entry.expiresNs > now) continue;
        bpf.mapDelete(this.fdOf(entry.bytes), entry.key);
        for (const key of entry.nameKeys) bpf.mapDelete(this.maps.learned_names, key);
        learned.delete(k);
        n++;
      }
    }
    return n;
  }

  /** The first name the address was learned for under `learnedId`, if any. */
  nameOf(learnedId: number, bytes: number[]): string | undefined {
    return this.byId.get(learnedId)?.get(addressKey(bytes))?.names[0];
  }

  /** Hostname → addresses learned under `learnedId`, unexpired. */
  list(learnedId: number): { name: string; address: string; expiresInS: number }[] {
    const now = process.hrtime.bigint();
    const out: { name: string; address: string; expiresInS: number }[] = [];
    for (const entry of this.byId.get(learnedId)?.values() ?? []) {
      if (entry.expiresNs <= now) continue;
      out.push({
        name: entry.names[0] ?? '',
        address: ipaddr.fromByteArray(entry.bytes).toString(),
        expiresInS: Number((entry.expiresNs - now) / 1_000_000n) / 1000,
      });
    }
    return out;
  }

  /** Entries of computers this process knows (adopted ones still unnamed aside). */
  count(): number {
    let n = 0;
    for (const [learnedId, learned] of this.byId) if (!this.unnamed.has(learnedId)) n += learned.size;
    return n;
  }

  private write(
    learnedId: number,
    policyId: number,
    verdict: Verdict,
    names: string[],
    bytes: number[],
    expiresNs: bigint,
  ): void {
    const portSet = this.portSet(policyId, verdict.codes);
    const key = encodeLearnedKey(learnedId, bytes);
    const known = this.entries(learnedId).get(addressKey(bytes));
    // The names first: a connect that sees the address bound finds them.
    const nameKeys = verdict.bindName
      ? this.writeNames(learnedId, policyId, verdict, names, bytes, portSet)
      : [];
    const flags = (verdict.bindName ? LEARNED_FLAG.bindName : 0) | (verdict.udp ? LEARNED_FLAG.udp : 0);
    bpf.mapUpdate(
      this.fdOf(bytes),
      key,
      encodeLearned({ expiresNs, portSet, anyPortProtos: verdict.anyPortProtos, flags }),
    );
    const kept = new Set(nameKeys.map((k) => k.toString('hex')));
    for (const old of known?.nameKeys ?? []) {
      if (!kept.has(old.toString('hex'))) bpf.mapDelete(this.maps.learned_names, old);
    }
    this.entries(learnedId).set(addressKey(bytes), { names, bytes, expiresNs, key, nameKeys });
  }

  /** learned_names entries of a name-bound address: every name of its chains, and the wildcard patterns over them. */
  private writeNames(
    learnedId: number,
    policyId: number,
    verdict: Verdict,
    names: string[],
    bytes: number[],
    portSet: number,
  ): Buffer[] {
    const keys: Buffer[] = [];
    const value = encodeRuleValue(portSet, verdict.anyPortProtos);
    for (const name of names) {
      const key = encodeLearnedName(learnedId, bytes, name);
      bpf.mapUpdate(this.maps.learned_names, key, value);
      keys.push(key);
    }
    for (const w of verdict.wildcards) {
      const key = encodeLearnedName(learnedId, bytes, w.pattern);
      bpf.mapUpdate(
        this.maps.learned_names,
        key,
        encodeRuleValue(this.portSet(policyId, w.codes), w.anyPortProtos),
      );
      keys.push(key);
    }
    return keys;
  }

  private portSet(policyId: number, codes: number[]): number {
    return codes.length === 0 ? 0 : this.policies.portSet(policyId, codes);
  }

  private entries(learnedId: number): Map<string, LearnedEntry> {
    let learned = this.byId.get(learnedId);
    if (!learned) {
      learned = new Map();
      this.byId.set(learnedId, learned);
    }
    return learned;
  }

  private fdOf(bytes: readonly number[]): number {
    return bytes.length === 4 ? this.maps.learned_v4 : this.maps.learned_v6;
  }
}

function deleteKeys(keys: readonly { fd: number; key: Buffer }[]): void {
  for (const { fd, key } of keys) bpf.mapDelete(fd, key);
}
