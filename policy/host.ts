/**
 * Parsing and normalisation of a rule's `host`: the one place that decides
 * which strings are addresses, CIDR blocks, hostnames or wildcards.
 */
import { domainToASCII } from 'node:url';
import ipaddr from 'ipaddr.js';

export type ParsedHost =
  | { kind: 'cidr'; family: 4 | 6; bytes: number[]; prefixLen: number; normalised: string }
  | { kind: 'hostname'; name: string; normalised: string }
  | { kind: 'wildcard'; suffix: string; normalised: string };

export class HostError extends Error {}

const LABEL = /^(?!-)[a-z0-9-]{1,63}(?<!-)$/;

/** Parses `host`; throws HostError with a message that says what to change. */
export function parseHost(input: string): ParsedHost {
  const fast = parseDottedQuad(input);
  if (fast) return fast;
  const host = input.trim();
  if (host === '') throw new HostError('must not be empty: give an address, a CIDR block or a hostname');
  if (host.includes('/')) return parseCidr(host);
  const address = parseAddress(host);
  if (address) return cidrOf(address, address.kind() === 'ipv4' ? 32 : 128);
  if (/^[0-9.]+$/.test(host) || host.includes(':')) {
    throw new HostError(
      `"${input}" is not a valid IPv4 or IPv6 address (write IPv4 as four decimal parts, a.b.c.d)`,
    );
  }
  if (host.startsWith('*.')) {
    const suffix = normaliseHostname(host.slice(2), input);
    return { kind: 'wildcard', suffix, normalised: `*.${suffix}` };
  }
  if (host.includes('*')) {
    throw new HostError(
      `"${input}": a wildcard is allowed only as a leading "*." (for example *.example.com)`,
    );
  }
  const name = normaliseHostname(host, input);
  return { kind: 'hostname', name, normalised: name };
}

/** Returns the stored form of `host`. */
export function normaliseHost(host: string): string {
  return parseHost(host).normalised;
}

/**
 * The common case, IPv4 a.b.c.d[/len] in canonical decimal (no leading
 * zeros), parsed by hand: policies of 100,000 rules compile often. Anything
 * else returns undefined and takes the general path, which explains errors.
 */
function parseDottedQuad(host: string): ParsedHost | undefined {
  const parts = [0, 0, 0, 0, 32];
  let part = 0;
  let digits = 0;
  let value = 0;
  for (let i = 0; i <= host.length; i++) {
    const ch = i < host.length ? host.charCodeAt(i) : -1;
    if (ch >= 48 && ch <= 57) {
      if (digits === 1 && value === 0) return undefined; // leading zero
      value = value * 10 + (ch - 48);
      if (++digits > 3) return undefined;
      continue;
    }
    const isDot = ch === 46 && part < 3;
    const isSlash = ch === 47 && part === 3;
    if (digits === 0 || !(isDot || isSlash || ch === -1) || (ch === -1 && part < 3)) return undefined;
    parts[part++] = value;
    digits = 0;
    value = 0;
    if (ch === -1) break;
  }
  const [a = 0, b = 0, c = 0, d = 0, prefixLen = 32] = parts;
  if (a > 255 || b > 255 || c > 255 || d > 255 || prefixLen > 32) return undefined;
  const mask = prefixLen === 0 ? 0 : (0xffffffff << (32 - prefixLen)) >>> 0;
  const cleared = (((a << 24) | (b << 16) | (c << 8) | d) & mask) >>> 0;
  const bytes = [cleared >>> 24, (cleared >>> 16) & 255, (cleared >>> 8) & 255, cleared & 255];
  const unchanged = bytes[0] === a && bytes[1] === b && bytes[2] === c && bytes[3] === d;
  // Already normalised input (what the API stores) is its own normal form; "/32" is dropped.
  const normalised =
    unchanged && !(part === 5 && prefixLen === 32)
      ? host
      : `${bytes[0]}.${bytes[1]}.${bytes[2]}.${bytes[3]}${prefixLen === 32 ? '' : `/${prefixLen}`}`;
  return { kind: 'cidr', family: 4, bytes, prefixLen, normalised };
}

function clearHostBits(bytes: number[], prefixLen: number): void {
  for (let bit = prefixLen; bit < bytes.length * 8; bit++) {
    const i = bit >> 3;
    bytes[i] = (bytes[i] ?? 0) & ~(0x80 >> (bit & 7));
  }
}

function parseAddress(text: string): ipaddr.IPv4 | ipaddr.IPv6 | undefined {
  // Only IPv4 text goes to the IPv4 check: it throws (slowly) inside on anything else.
  if (!text.includes(':'))
    return ipaddr.IPv4.isValidFourPartDecimal(text) ? ipaddr.IPv4.parse(text) : undefined;
  if (text.includes('%')) return undefined;
  try {
    return ipaddr.IPv6.parse(text);
  } catch {
    return undefined;
  }
}

function parseCidr(host: string): ParsedHost {
  const [addrText = '', lenText = '', ...extra] = host.split('/');
  const address = parseAddress(addrText);
  if (!address || extra.length > 0) {
    throw new HostError(`"${host}" is not a valid CIDR block (for example 10.0.0.0/8 or 2001:db8::/32)`);
  }
  const max = address.kind() === 'ipv4' ? 32 : 128;
  if (!/^\d{1,3}$/.test(lenText) || Number(lenText) > max) {
    throw new HostError(`"${host}": the prefix length must be an integer from 0 to ${max}`);
  }
  return cidrOf(address, Number(lenText));
}

function cidrOf(address: ipaddr.IPv4 | ipaddr.IPv6, prefixLen: number): ParsedHost {
  const family = address.kind() === 'ipv4' ? 4 : 6;
  const original = address.toByteArray();
  const bytes = [...original];
  clearHostBits(bytes, prefixLen);
  const same = bytes.every((b, i) => b === original[i]);
  const cleared = same ? address : ipaddr.fromByteArray(bytes);
  const text = family === 4 ? cleared.toString() : (cleared as ipaddr.IPv6).toRFC5952String();
  const full = prefixLen === bytes.length * 8;
  return { kind: 'cidr', family, bytes, prefixLen, normalised: full ? text : `${text}/${prefixLen}` };
}

function normaliseHostname(name: string, input: string): string {
  const trimmed = name.endsWith('.') ? name.slice(0, -1) : name;
  // WHATWG's domainToASCII lower-cases and turns IDN into punycode; '' means it gave up.
  const ascii = domainToASCII(trimmed) || trimmed.toLowerCase();
  if (ascii === '' || ascii.length > 253) {
    throw new HostError(`"${input}" is not a valid hostname (1 to 253 characters, labels separated by dots)`);
  }
  for (const label of ascii.split('.')) {
    if (!LABEL.test(label)) {
      throw new HostError(
        `"${input}" is not a valid hostname: each label must be 1 to 63 letters, digits or hyphens, not starting or ending with a hyphen`,
      );
    }
  }
  if (/^\d+$/.test(ascii.split('.').pop() ?? '')) {
    throw new HostError(`"${input}" is not a valid hostname: the last label must not be all digits`);
  }
  return ascii;
}
