/**
 * DNS messages as the proxy handles them on the wire: names, CNAME chains,
 * TTL caps, the queries it rebuilds and the answers it makes itself, and
 * DNS-over-TCP framing (both sides: sandboxes' connections and upstreams').
 */
import dnsPacket from 'dns-packet';
import ipaddr from 'ipaddr.js';

export const RCODE = { NOERROR: 0, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;

/** The rcode of a wire-format message (the low four bits of its flags). */
export function rcodeOf(msg: Buffer): number {
  return msg.length < 4 ? -1 : msg[3]! & 0x0f;
}

/** RFC 8914 Extended DNS Error option (EDNS option 15), INFO-CODE 15 "Blocked". */
const EDE_OPTION = 15;
const EDE_BLOCKED = 15;

/** DNS over TCP (RFC 1035 4.2.2): a message goes out behind its length, two bytes. */
export function tcpFrame(msg: Buffer): Buffer {
  const frame = Buffer.alloc(2 + msg.length);
  frame.writeUInt16BE(msg.length);
  msg.copy(frame, 2);
  return frame;
}

/**
 * DNS over TCP, the reading side: collects a connection's bytes and hands
 * out each whole message. What it holds stays below one frame (64 KiB + 2):
 * the length field cannot say more.
 */
export class TcpFrames {
  private buffered: Buffer = Buffer.alloc(0);

  /** The messages that `chunk` completed, in order. */
  push(chunk: Buffer): Buffer[] {
    this.buffered = this.buffered.length === 0 ? chunk : Buffer.concat([this.buffered, chunk]);
    const messages: Buffer[] = [];
    while (this.buffered.length >= 2) {
      const end = 2 + this.buffered.readUInt16BE(0);
      if (this.buffered.length < end) break;
      messages.push(this.buffered.subarray(2, end));
      this.buffered = this.buffered.subarray(end);
    }
    return messages;
  }
}

/**
 * Query types that `dns: listed` forwards for covered names: addresses,
 * aliases, and the service bindings (RFC 9460) that browsers ask for. This
 * dns-packet spells 64 and 65 as UNKNOWN_64 and UNKNOWN_65; later ones as
 * SVCB and HTTPS.
 */
export const LISTED_TYPES: ReadonlySet<string> = new Set([
  'A',
  'AAAA',
  'CNAME',
  'SVCB',
  'HTTPS',
  'UNKNOWN_64',
  'UNKNOWN_65',
]);

export function normaliseName(name: string): string {
  const lower = name.toLowerCase();
  return lower.endsWith('.') ? lower.slice(0, -1) : lower;
}

/** Follows CNAMEs from `qname`: every name of the chain, the A/AAAA bytes at its end, and the smallest TTL on the way. */
export function resolveChain(
  qname: string,
  answers: dnsPacket.Answer[],
): { names: string[]; addresses: number[][]; ttl: number } {
  const names = [qname];
  let ttl = Number.POSITIVE_INFINITY;
  let current = qname;
  for (let hops = 0; hops < 16; hops++) {
    const cname = answers.find((a) => a.type === 'CNAME' && normaliseName(a.name) === current) as
      | { ttl?: number; data: unknown }
      | undefined;
    if (!cname) break;
    ttl = Math.min(ttl, cname.ttl ?? 0);
    current = normaliseName(String(cname.data));
    if (names.includes(current)) break;
    names.push(current);
  }
  const addresses: number[][] = [];
  for (const a of answers) {
    if ((a.type !== 'A' && a.type !== 'AAAA') || !names.includes(normaliseName(a.name))) continue;
    try {
      const data = String((a as { data: unknown }).data);
      addresses.push(a.type === 'A' ? data.split('.').map(Number) : ipaddr.parse(data).toByteArray());
      ttl = Math.min(ttl, (a as { ttl?: number }).ttl ?? 0);
    } catch {}
  }
  return { names, addresses, ttl: Number.isFinite(ttl) ? ttl : 0 };
}

/**
 * Lowers every answer-section TTL of a wire-format DNS message above `max`
 * to `max`, in place. A message it cannot walk is left alone (it was
 * decoded already; the addresses came from the decoded answers).
 */
export function capAnswerTtls(msg: Buffer, max: number): void {
  if (msg.length < 12) return;
  const questions = msg.readUInt16BE(4);
  const answers = msg.readUInt16BE(6);
  let o = 12;
  for (let i = 0; i < questions; i++) {
    o = nameEnd(msg, o);
    if (o < 0) return;
    o += 4;
  }
  for (let i = 0; i < answers; i++) {
    o = nameEnd(msg, o);
    if (o < 0 || o + 10 > msg.length) return;
    if (msg.readUInt32BE(o + 4) > max) msg.writeUInt32BE(max, o + 4);
    o += 10 + msg.readUInt16BE(o + 8);
  }
}

/** Where the name at `at` ends (after its last label, or its compression pointer); -1: it runs off the message. */
export function nameEnd(msg: Buffer, at: number): number {
  for (let o = at; o < msg.length; ) {
    const len = msg[o]!;
    if (len === 0) return o + 1;
    if ((len & 0xc0) === 0xc0) return o + 2 <= msg.length ? o + 2 : -1;
    if (len > 63) return -1; // the label types of RFC 6891's retired extension
    o += 1 + len;
  }
  return -1;
}

/**
 * dns listed: the query as it goes upstream, rebuilt from what was judged:
 * the decoded question (the name as the rules matched it: a label with a
 * dot in it, which the decoder joins, goes out as two labels, so the name
 * forwarded is the name judged), recursion desired and checking disabled
 * as asked, and of EDNS only the payload size and the DO bit. Nothing else
 * the client put in its message (answer, authority or additional records,
 * EDNS options, other flags) goes upstream.
 */
export function questionOnly(query: dnsPacket.Packet, question: dnsPacket.Question): Buffer {
  const opt = (query.additionals ?? []).find((a) => a.type === 'OPT') as
    | { udpPayloadSize?: number; flags?: number }
    | undefined;
  return dnsPacket.encode({
    type: 'query',
    id: query.id ?? 0,
    flags: (query.flags ?? 0) & (dnsPacket.RECURSION_DESIRED | dnsPacket.CHECKING_DISABLED),
    questions: [{ name: question.name, type: question.type, class: question.class ?? 'IN' }],
    ...(opt
      ? {
          additionals: [
            {
              type: 'OPT',
              name: '.',
              udpPayloadSize: Math.max(512, opt.udpPayloadSize ?? 512),
              extendedRcode: 0,
              ednsVersion: 0,
              flags: (opt.flags ?? 0) & dnsPacket.DNSSEC_OK,
              flag_do: ((opt.flags ?? 0) & dnsPacket.DNSSEC_OK) !== 0,
              options: [],
            },
          ],
        }
      : {}),
  });
}

/**
 * An answer the proxy makes itself: the question, no records, `rcode`. With
 * `blocked` and a query that had EDNS, an OPT record with an Extended DNS
 * Error "Blocked" and that text (no OPT without EDNS in the query: RFC 6891).
 */
export function errorReply(query: dnsPacket.Packet, rcode: number, blocked?: string): Buffer {
  const rd = (query.flags ?? 0) & dnsPacket.RECURSION_DESIRED;
  const edns = blocked !== undefined && (query.additionals ?? []).some((a) => a.type === 'OPT');
  return dnsPacket.encode({
    type: 'response',
    id: query.id ?? 0,
    flags: rd | dnsPacket.RECURSION_AVAILABLE | rcode,
    questions: query.questions ?? [],
    ...(edns ? { additionals: [blockedOpt(blocked)] } : {}),
  });
}

/** An OPT record with an Extended DNS Error "Blocked" and `text`. */
function blockedOpt(text: string): dnsPacket.Answer {
  const data = Buffer.alloc(2 + Buffer.byteLength(text));
  data.writeUInt16BE(EDE_BLOCKED);
  data.write(text, 2);
  // dns-packet's types name only a few option codes; it encodes any code given with `data`.
  return {
    type: 'OPT',
    name: '.',
    udpPayloadSize: 1232,
    extendedRcode: 0,
    ednsVersion: 0,
    flags: 0,
    flag_do: false,
    options: [{ code: EDE_OPTION, data }],
  } as unknown as dnsPacket.Answer;
}
