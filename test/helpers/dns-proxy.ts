/**
 * The agent's DNS proxy as the privileged tests run it: forwarding to one
 * test upstream (test/helpers/dnsmasq.ts), listening on loopback and, in a
 * world with a gateway, on the gateway's host side; TTLs floored at 5 s.
 * `options` overrides any of that (callbacks, the log, the floor).
 */
import { pino } from 'pino';
import { DnsProxy, type DnsProxyOptions } from '../../daemon/dns/proxy.js';
import type { Enforcer } from '../../daemon/kernel/enforcer.js';
import type { Dnsmasq } from './dnsmasq.js';
import type { World } from './world.js';

export function testDnsProxy(
  world: World,
  enforcer: Enforcer,
  upstream: Pick<Dnsmasq, 'host' | 'port'>,
  portRange: [number, number],
  options: Partial<DnsProxyOptions> = {},
): DnsProxy {
  const gw = world.gateway;
  return new DnsProxy({
    enforcer,
    upstreams: [{ host: upstream.host, port: upstream.port }],
    listen: ['127.0.0.1', '::1', ...(gw ? [gw.host4, gw.host6] : [])],
    portRange,
    ttlFloor: 5,
    ttlCeiling: 3600,
    timeoutMs: 2000,
    log: pino({ level: 'silent' }),
    ...options,
  });
}
