/**
 * TLS ClientHello records built byte by byte, shaped like a modern client's
 * (TLS 1.3 offered, supported_groups, a key share of the size a
 * post-quantum hybrid group gives), for the name-bound connection tests and
 * bench/names.ts.
 */

function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
}

function extension(type: number, body: Buffer): Buffer {
  return Buffer.concat([u16(type), u16(body.length), body]);
}

export interface HelloOptions {
  /** server_name entries (host_name type); none: no server_name extension. */
  names?: string[];
  /** Bytes of the key share (1216 with X25519MLKEM768 and X25519 offered). @default 1216 */
  keyShareBytes?: number;
  /** An encrypted_client_hello extension (GREASE-shaped). @default false */
  ech?: boolean;
}

/** One TLS record (type 22) holding one ClientHello. */
export function clientHello(opts: HelloOptions = {}): Buffer {
  const exts: Buffer[] = [];
  if (opts.names) {
    const list = Buffer.concat(
      opts.names.map((n) => Buffer.concat([Buffer.from([0]), u16(n.length), Buffer.from(n, 'ascii')])),
    );
    exts.push(extension(0, Buffer.concat([u16(list.length), list])));
  }
  exts.push(extension(10, Buffer.from('0006 11ec 001d 0017'.replace(/ /g, ''), 'hex'))); // supported_groups
  exts.push(extension(43, Buffer.from('020304', 'hex'))); // supported_versions: TLS 1.3
  exts.push(extension(13, Buffer.from('0004 0403 0804'.replace(/ /g, ''), 'hex'))); // signature_algorithms
  const share = Buffer.alloc(opts.keyShareBytes ?? 1216, 0x5a);
  const entry = Buffer.concat([u16(0x11ec), u16(share.length), share]);
  exts.push(extension(51, Buffer.concat([u16(entry.length), entry]))); // key_share
  if (opts.ech) exts.push(extension(0xfe0d, Buffer.alloc(200, 0x33)));
  const extBytes = Buffer.concat(exts);
  const body = Buffer.concat([
    Buffer.from([3, 3]),
    Buffer.alloc(32, 7), // random
    Buffer.from([32]),
    Buffer.alloc(32, 9), // session id
    u16(6),
    Buffer.from('130113021303', 'hex'),
    Buffer.from([1, 0]), // compression: null
    u16(extBytes.length),
    extBytes,
  ]);
  const handshake = Buffer.concat([Buffer.from([1, 0]), u16(body.length), body]);
  return Buffer.concat([Buffer.from([22, 3, 1]), u16(handshake.length), handshake]);
}
