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

const DOTTED_QUAD =
  /^(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})(?:\/(0|[1-9]\d?))?$/;

/** The common case, IPv4 a.b.c.d[/len], without ipaddr.js (policies of 100,000 rules compile often). */
function parseDottedQuad(host: string): ParsedHost | undefined {
  const m = DOTTED_QUAD.exec(host);
  if (!m) return undefined;
  const bytes = [Number(m[1]), Number(m[2]), Number(m[3]), Number(m[4])];
  const prefixLen = m[5] === undefined ? 32 : Number(m[5]);
  if (bytes.some((b) => b > 255) || prefixLen > 32) return undefined; // the slow path explains the error
  clearHostBits(bytes, prefixLen);
  const text = bytes.join('.');
  return {
    kind: 'cidr',
    family: 4,
    bytes,
    prefixLen,
    normalised: prefixLen === 32 ? text : `${text}/${prefixLen}`,
  };
}

function clearHostBits(bytes: number[], prefixLen: number): void {
  for (let bit = prefixLen; bit < bytes.length * 8; bit++) {
    const i = bit >> 3;
    bytes[i] = (bytes[i] ?? 0) & ~(0x80 >> (bit & 7));
  }
}

function parseAddress(text: string): ipaddr.IPv4 | ipaddr.IPv6 | undefined {
  if (ipaddr.IPv4.isValidFourPartDecimal(text)) return ipaddr.IPv4.parse(text);
  if (text.includes(':') && !text.includes('%') && ipaddr.IPv6.isValid(text)) return ipaddr.IPv6.parse(text);
  return undefined;
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
  const bytes = address.toByteArray();
  clearHostBits(bytes, prefixLen);
  const cleared = ipaddr.fromByteArray(bytes);
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
