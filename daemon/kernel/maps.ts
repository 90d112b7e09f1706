/**
 * Map access beyond one element: walks, packed batches, "config" slots and
 * memory figures. Byte layouts stay in abi.ts: keys and values here are
 * opaque buffers of a given size.
 */

import { readFileSync } from 'node:fs';
import { constants } from 'node:os';
import { CONFIG_VALUE_SIZE, decodeU64, encodeU32, encodeU64, LAYOUT } from './abi.js';
import * as bpf from './libbpf.js';
import { decodeObserved, type ObservedEntry } from './records.js';

const { EINVAL, EOPNOTSUPP } = constants.errno;

/** Every key of a map (get_next_key walk); for start-up and small maps. */
export function allKeys(fd: number, size: number): Buffer[] {
  const keys: Buffer[] = [];
  let prev: Buffer | null = null;
  for (;;) {
    const next = Buffer.alloc(size);
    if (!bpf.mapNextKey(fd, prev, next)) return keys;
    keys.push(next);
    prev = next;
  }
}

/** The value under `key` (`size` bytes), or undefined when the key is absent. */
export function lookup(fd: number, key: Buffer, size: number): Buffer | undefined {
  const value = Buffer.alloc(size);
  return bpf.mapLookup(fd, key, value) ? value : undefined;
}

/** False once the kernel refused a batch update (too old, or the map type has none): then one call per key. */
let batchUpdateWorks = true;

/** Inserts `keys`/`values` (packed, fixed sizes) with one batch call where the kernel allows it. */
export function updateMany(
  fd: number,
  keys: Buffer,
  values: Buffer,
  keySize: number,
  valueSize: number,
): void {
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

/** Deletes packed `keys` of `keySize` bytes each (absent ones are no error). */
export function deleteMany(fd: number, keys: Buffer, keySize: number): void {
  for (let i = 0; i < keys.length / keySize; i++)
    bpf.mapDelete(fd, keys.subarray(i * keySize, (i + 1) * keySize));
}

/** A slot of the "config" array (CONFIG_SLOT); 0n when never written. */
export function readConfig(configFd: number, slot: number): bigint {
  return decodeU64(lookup(configFd, encodeU32(slot), CONFIG_VALUE_SIZE) ?? Buffer.alloc(CONFIG_VALUE_SIZE));
}

/** Writes a slot of the "config" array: a number, or a value already encoded (abi.ts). */
export function writeConfig(configFd: number, slot: number, value: bigint | Buffer): void {
  bpf.mapUpdate(configFd, encodeU32(slot), typeof value === 'bigint' ? encodeU64(value) : value);
}

/** Kernel memory of each map, from /proc/self/fdinfo (memlock). */
export function mapMemory(maps: Readonly<Record<string, number>>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [name, fd] of Object.entries(maps)) {
    try {
      const m = /^memlock:\s+(\d+)/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
      if (m) out[name] = Number(m[1]);
    } catch {}
  }
  return out;
}

/** Every destination in "observed" (a walk of the map: O(entries), at most EGRESS_MAX_OBSERVED). */
export function readObserved(fd: number): ObservedEntry[] {
  const out: ObservedEntry[] = [];
  for (const key of allKeys(fd, LAYOUT.egress_observed_key.size)) {
    const value = lookup(fd, key, LAYOUT.egress_observed.size);
    if (value) out.push(decodeObserved(key, value)); // evicted meanwhile: gone
  }
  return out;
}
