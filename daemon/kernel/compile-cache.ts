/**
 * What the enforcer needs of recently compiled policies, by a hash of their
 * rules: platforms give many computers the same policy, and a resync would
 * compile it for each. Entries keep no prefixes: a policy whose entries are
 * no longer installed is compiled again.
 */
import { createHash } from 'node:crypto';
import type { Policy } from '../../policy/types.js';
import { type CompiledPolicy, compile } from './compile.js';

/** Distinct policies remembered. */
const COMPILED_CACHE_SIZE = 1024;

export interface CachedPolicy {
  /** forNames() of the compiled policy: what name verdicts need. */
  compiled: CompiledPolicy;
  /** contentHash() of the whole compiled policy. */
  hash: string;
  /** Whether it has rule-map entries (prefixes or names) at all. */
  hasEntries: boolean;
}

export class CompileCache {
  private readonly cache = new Map<string, CachedPolicy>();

  /**
   * The policy's cached compilation, compiled when absent or when `stale`
   * says so; `full` is the whole compiled policy whenever it was compiled.
   */
  get(
    policy: Policy,
    stale?: (cached: CachedPolicy) => boolean,
  ): { cached: CachedPolicy; full?: CompiledPolicy } {
    const rulesKey = policyKey(policy);
    let cached = this.cache.get(rulesKey);
    let full: CompiledPolicy | undefined;
    if (!cached || stale?.(cached)) {
      full = compile(policy);
      cached = {
        compiled: forNames(full),
        hash: contentHash(full),
        hasEntries: full.prefixes.length > 0 || full.names.length > 0,
      };
    }
    this.cache.delete(rulesKey); // most recently used last: the first key is evicted first
    this.cache.set(rulesKey, cached);
    if (this.cache.size > COMPILED_CACHE_SIZE) this.cache.delete(this.cache.keys().next().value!);
    return full ? { cached, full } : { cached };
  }
}

/** A policy's mode and rules: as they are up to 8 KiB, hashed beyond (the cache stays small). */
function policyKey(policy: Policy): string {
  const text = `${policy.mode}\n${policy.rulesJson ?? JSON.stringify(policy.rules)}`;
  return text.length <= 8192 ? text : createHash('sha256').update(text).digest('base64');
}

/** What a computer's record keeps of its compiled policy: the mode and what name verdicts need (not the prefixes). */
function forNames(compiled: CompiledPolicy): CompiledPolicy {
  return compiled.names.length === 0
    ? { mode: compiled.mode, prefixes: [], ports: [], names: [] }
    : { mode: compiled.mode, prefixes: [], ports: compiled.ports, names: compiled.names };
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
