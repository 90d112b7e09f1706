/**
 * What the agent's configuration tells the programs about this host: where
 * the DNS proxy can be reached ("config" slots) and the internal CIDRs,
 * reachable in every mode (internal_v4, internal_v6).
 */
import ipaddr from 'ipaddr.js';
import { EgressdError } from '../../policy/errors.js';
import { parseHost } from '../../policy/host.js';
import {
  CONFIG_SLOT,
  encodeDnsPorts,
  encodeInternalKey,
  encodeMarks,
  encodeProxyV4,
  encodeProxyV6,
  internalKeySize,
} from './abi.js';
import * as bpf from './libbpf.js';
import type { LoadedObject } from './loader.js';
import { allKeys, writeConfig } from './maps.js';

type HostMaps = Pick<LoadedObject['maps'], 'config' | 'internal_v4' | 'internal_v6'>;

export class HostConfig {
  constructor(private readonly maps: HostMaps) {}

  /**
   * Where the proxy can be reached: the port range computers' proxy ports
   * come from, and the addresses the hooks use for sockets in other network
   * namespaces than the agent's (none: DNS refused there).
   */
  setDns(ports: [number, number], proxyV4?: string, proxyV6?: string): void {
    const config = this.maps.config;
    writeConfig(config, CONFIG_SLOT.dnsPorts, encodeDnsPorts(ports[0], ports[1]));
    writeConfig(
      config,
      CONFIG_SLOT.proxyV4,
      encodeProxyV4(proxyV4 ? ipaddr.IPv4.parse(proxyV4).toByteArray() : undefined),
    );
    const v6 = encodeProxyV6(proxyV6 ? ipaddr.IPv6.parse(proxyV6).toByteArray() : undefined);
    writeConfig(config, CONFIG_SLOT.proxyV6Hi, v6.hi);
    writeConfig(config, CONFIG_SLOT.proxyV6Lo, v6.lo);
  }

  /** Replaces the internal CIDRs (reachable in every mode): new ones first, then removals. */
  setInternalCidrs(cidrs: string[]): void {
    const wanted = new Map<string, Buffer>();
    for (const cidr of cidrs) {
      const host = parseHost(cidr);
      if (host.kind !== 'cidr') {
        throw new EgressdError(
          'BAD_INTERNAL_CIDR',
          `internal CIDR "${cidr}" is not an address or CIDR block`,
        );
      }
      const key = encodeInternalKey(host.bytes, host.prefixLen);
      wanted.set(`${host.family}:${key.toString('hex')}`, key);
    }
    for (const family of [4, 6] as const) {
      const fd = family === 4 ? this.maps.internal_v4 : this.maps.internal_v6;
      const existing = allKeys(fd, internalKeySize(family));
      for (const [k, key] of wanted) if (k.startsWith(`${family}:`)) bpf.mapUpdate(fd, key, encodeMarks());
      for (const key of existing) if (!wanted.has(`${family}:${key.toString('hex')}`)) bpf.mapDelete(fd, key);
    }
  }
}
