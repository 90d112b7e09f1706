/**
 * HTTPS and SVCB records (RFC 9460) as the proxy hands them to a computer:
 * without Encrypted Client Hello (stripEch). Apart from wire.ts because it
 * rebuilds a message, compression pointers and all, where wire.ts reads
 * messages or makes new ones.
 */
import { nameEnd } from './wire.js';

/** Record types and SvcParamKeys (RFC 9460 14) that stripEch reads. */
const TYPE_SVCB = 64;
const TYPE_HTTPS = 65;
const KEY_MANDATORY = 0;
const KEY_ECH = 5;
/** The TC bit of the flags: the message was cut to fit. */
const FLAG_TC = 0x0200;

/**
 * Where the names are in the RDATA of the types whose names may be
 * compressed (RFC 1035 3.3, and those RFC 3597 4 has receivers decompress):
 * 'n' a name, a digit that many bytes, 's' a character-string. The rest of
 * the RDATA, and every other type's, is bytes.
 */
const RDATA_NAMES = new Map<number, string>([
  ...[2, 3, 4, 5, 7, 8, 9, 12, 30, 39].map((type): [number, string] => [type, 'n']),
  ...[6, 14, 17].map((type): [number, string] => [type, 'nn']),
  ...[15, 18, 21, 36].map((type): [number, string] => [type, '2n']),
  [24, '99n'],
  [26, '2nn'],
  [33, '6n'],
  [35, '4sssn'],
]);

/** One resource record of a message, as stripEch found it. */
interface ResourceRecord {
  /** 0 answer, 1 authority, 2 additional. */
  section: number;
  /** Its owner name; its type, class and TTL (then RDLENGTH); its RDATA; its end. */
  at: number;
  fixed: number;
  rdata: number;
  end: number;
  /** SVCB/HTTPS: the bytes of its ech param; 'drop': the record goes. */
  ech?: [number, number] | 'drop';
}

/**
 * The message as the computer gets it: without the `ech` SvcParam (key 5)
 * in any HTTPS or SVCB record of any section. ECH hides the real server
 * name inside an encrypted ClientHello (the outer, readable name would be
 * the provider's public name), and the kernel judges a TLS connection by
 * that name, against the names its address was learned for. A record whose
 * `mandatory` lists ech, or whose RDATA is malformed, goes (a client must
 * not use the first without ech; the second cannot be read for ech); alias
 * form (priority 0, whose params no client reads) stays as it is.
 *
 * Every other byte stays, but for what follows from a record that shrank or
 * went: RDLENGTH, the section counts, and compression pointers (to where
 * their names went; to the name itself, spelled out, where it went with a
 * dropped record). DNSSEC: an RRSIG over a stripped RRset no longer
 * validates; a validating client sees the answer as bogus.
 *
 * Nothing to strip: a copy, byte for byte. Undefined: a message it cannot
 * walk, so cannot vouch for (a cut one, TC, ends at its last whole record
 * instead: the client asks again over TCP).
 */
export function stripEch(msg: Buffer): Buffer | undefined {
  const walked = records(msg);
  if (!walked) return undefined;
  const { questionsEnd, rrs, cut } = walked;
  if (!cut && !rrs.some((rr) => rr.ech !== undefined)) return Buffer.from(msg);
  const out = new Rebuild(msg);
  const counts = [0, 0, 0];
  try {
    out.copy(0, 12);
    for (let o = 12; o < questionsEnd; o += 4) {
      o = out.name(o);
      out.copy(o, o + 4);
    }
    for (const rr of rrs) {
      if (rr.ech === 'drop') continue;
      out.name(rr.at);
      out.copy(rr.fixed, rr.fixed + 8);
      const rdlength = out.length;
      out.copy(rr.fixed + 8, rr.fixed + 10);
      if (rr.ech) {
        // Service form, checked by svcbEch: the priority, an uncompressed target, the params but ech.
        out.copy(rr.rdata, rr.rdata + 2);
        out.copy(out.name(rr.rdata + 2, rr.end), rr.ech[0]);
        out.copy(rr.ech[1], rr.end);
      } else out.rdata(rr);
      out.setUInt16(rdlength, out.length - rdlength - 2);
      counts[rr.section]!++;
    }
    if (!cut) out.copy(rrs.at(-1)?.end ?? questionsEnd, msg.length);
  } catch {
    return undefined;
  }
  const reply = out.done();
  for (const [section, count] of counts.entries()) reply.writeUInt16BE(count, 6 + 2 * section);
  return reply;
}

/** The message's records, and where its questions end; undefined: it cannot be walked (and is not cut: TC). */
function records(msg: Buffer): { questionsEnd: number; rrs: ResourceRecord[]; cut: boolean } | undefined {
  if (msg.length < 12) return undefined;
  let o = 12;
  for (let i = msg.readUInt16BE(4); i > 0; i--) {
    o = nameEnd(msg, o);
    if (o < 0 || o + 4 > msg.length) return undefined;
    o += 4;
  }
  const questionsEnd = o;
  const rrs: ResourceRecord[] = [];
  for (let section = 0; section < 3; section++) {
    for (let i = msg.readUInt16BE(6 + 2 * section); i > 0; i--) {
      const fixed = nameEnd(msg, o);
      const end = fixed < 0 || fixed + 10 > msg.length ? -1 : fixed + 10 + msg.readUInt16BE(fixed + 8);
      if (end < 0 || end > msg.length) {
        return msg.readUInt16BE(2) & FLAG_TC ? { questionsEnd, rrs, cut: true } : undefined;
      }
      const rr: ResourceRecord = { section, at: o, fixed, rdata: fixed + 10, end };
      const type = msg.readUInt16BE(fixed);
      if (type === TYPE_SVCB || type === TYPE_HTTPS) {
        const ech = svcbEch(msg, rr.rdata, end);
        if (ech) rr.ech = ech;
      }
      rrs.push(rr);
      o = end;
    }
  }
  return { questionsEnd, rrs, cut: false };
}

/**
 * The bytes of the ech param of the SVCB/HTTPS RDATA msg[at, end), if it
 * has one; 'drop' if its mandatory lists ech, or it is malformed (RFC 9460
 * 2.2: an uncompressed target name, then params in strictly increasing key
 * order, each within the RDATA). Alias form (priority 0) is not read.
 */
function svcbEch(msg: Buffer, at: number, end: number): [number, number] | 'drop' | undefined {
  if (at + 2 > end) return 'drop';
  if (msg.readUInt16BE(at) === 0) return undefined;
  let o = at + 2;
  while (o < end && msg[o]! !== 0) {
    if (msg[o]! > 63) return 'drop';
    o += 1 + msg[o]!;
  }
  if (o++ >= end) return 'drop';
  let ech: [number, number] | undefined;
  for (let last = -1; o < end; ) {
    if (o + 4 > end) return 'drop';
    const key = msg.readUInt16BE(o);
    const next = o + 4 + msg.readUInt16BE(o + 2);
    if (key <= last || next > end) return 'drop';
    if (key === KEY_MANDATORY) {
      if (next === o + 4 || (next - o) % 2 !== 0) return 'drop';
      for (let k = o + 4; k < next; k += 2) if (msg.readUInt16BE(k) === KEY_ECH) return 'drop';
    }
    if (key === KEY_ECH) ech = [o, next];
    last = key;
    o = next;
  }
  return ech;
}

/**
 * A message rebuilt from another, `src`, piece by piece. The names it writes
 * with name() are where later compression pointers can go: a pointer to a
 * label of one of them points to where that label went; any other pointer
 * is replaced by the name it pointed to. Throws on what it cannot walk.
 */
class Rebuild {
  private readonly out = Buffer.alloc(0xffff);
  private written = 0;
  /** Each label name() wrote: its offset in src → in out. */
  private readonly labels = new Map<number, number>();

  constructor(private readonly src: Buffer) {}

  get length(): number {
    return this.written;
  }

  /** Appends src[from, to). */
  copy(from: number, to: number): void {
    if (from > to || to > this.src.length || this.written + to - from > this.out.length) {
      throw new Error('no room, or not in the message');
    }
    this.src.copy(this.out, this.written, from, to);
    this.written += to - from;
  }

  setUInt16(at: number, value: number): void {
    this.out.writeUInt16BE(value, at);
  }

  /**
   * Appends the name at `at`, which must end before `end`; where it ends in
   * src. `room`: the bytes a name may still take (255 in all); `jumps`: the
   * pointers followed to get here (a name of 255 bytes has 127 labels at
   * most: more jumps are a loop).
   */
  name(at: number, end = this.src.length, room = 255, jumps = 0): number {
    for (let o = at; o < end; ) {
      const len = this.src[o]!;
      if (len === 0) {
        this.copy(o, o + 1);
        return o + 1;
      }
      if ((len & 0xc0) === 0xc0) {
        if (o + 2 > end || jumps >= 127) break;
        const target = this.src.readUInt16BE(o) & 0x3fff;
        const moved = this.labels.get(target);
        if (moved !== undefined && moved < 0x4000) this.uint16(0xc000 | moved);
        else this.name(target, this.src.length, room, jumps + 1);
        return o + 2;
      }
      if (len > 63 || 1 + len >= room) break;
      this.labels.set(o, this.written);
      this.copy(o, o + 1 + len);
      room -= 1 + len;
      o += 1 + len;
    }
    throw new Error('not a name');
  }

  private uint16(value: number): void {
    if (this.written + 2 > this.out.length) throw new Error('no room');
    this.out.writeUInt16BE(value, this.written);
    this.written += 2;
  }

  /** Appends a record's RDATA: its names as name() writes them (RDATA_NAMES), the rest as it is. */
  rdata(rr: ResourceRecord): void {
    let o = rr.rdata;
    for (const step of RDATA_NAMES.get(this.src.readUInt16BE(rr.fixed)) ?? '') {
      const from = o;
      if (step === 'n') o = this.name(o, rr.end);
      else {
        o += step === 's' ? 1 + (o < rr.end ? this.src[o]! : 0) : Number(step);
        if (o > rr.end) throw new Error('RDATA too short');
        this.copy(from, o);
      }
    }
    this.copy(o, rr.end);
  }

  /** The message written. */
  done(): Buffer {
    return Buffer.from(this.out.subarray(0, this.written));
  }
}
