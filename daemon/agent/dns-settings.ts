/**
 * A computer's DNS proxy port: one while its mode redirects DNS, none when
 * unrestricted; also with `dns` none (the proxy answers, at once). No free
 * port: port 0, which refuses DNS in the kernel (fail closed). The port
 * forwards to the computer's own upstream when it has one.
 */
import { EgressdError } from '../../policy/errors.js';
import type { Policy } from '../../policy/types.js';
import type { DnsProxy } from '../dns/proxy.js';
import { parseHostPort } from '../dns/upstream.js';
import type { DnsSettings, Enforcer } from '../kernel/enforcer.js';
import type { AgentMetrics } from '../metrics.js';

export async function dnsSettings(
  deps: { proxy?: DnsProxy; enforcer: Enforcer; metrics?: AgentMetrics },
  id: string,
  policy: Policy,
  dnsUpstream: string | null,
): Promise<{ settings: DnsSettings; exhausted?: string }> {
  const proxy = deps.proxy;
  if (!proxy) return { settings: {} };
  if (policy.mode === 'unrestricted') {
    proxy.release(id);
    return { settings: { port: 0 } };
  }
  try {
    // The API stores only what parses; anything else (a hand-edited store) is refused, not ignored.
    const upstream = dnsUpstream === null ? undefined : parseHostPort(dnsUpstream, 53);
    if (dnsUpstream !== null && !upstream) {
      throw new EgressdError(
        'BAD_DNS_UPSTREAM',
        `dns_upstream "${dnsUpstream}" is not address:port: register the computer again with a valid one`,
      );
    }
    const port = await proxy.ensure(id, deps.enforcer.state(id)?.dnsPort ?? 0, { upstream });
    return { settings: { port } };
  } catch (err) {
    if (!(err instanceof EgressdError && err.code === 'DNS_PORTS_EXHAUSTED')) throw err;
    deps.metrics?.dnsPortsExhausted.inc();
    return { settings: { port: 0 }, exhausted: err.message };
  }
}
