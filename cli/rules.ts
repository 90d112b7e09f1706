/**
 * The CLI's rule syntax, host[:port][/proto][,bind_name=false]:
 * "github.com:443/tcp", "10.0.0.0/8", "[2001:db8::1]:53/udp",
 * "2001:db8::/32", "cdn.example:443/tcp,bind_name=false" (the field as the
 * API spells it; no host holds a comma). Pure. formatCliRule writes a rule
 * back in it.
 */
import { PROTOCOLS, type Protocol } from '../policy/types.js';

export interface CliRule {
  host: string;
  port?: number;
  protocol?: Protocol;
  bind_name?: boolean;
}

export class RuleSyntaxError extends Error {}

export function parseCliRule(text: string): CliRule {
  const [main = '', ...options] = text.trim().split(',');
  let bindName: boolean | undefined;
  for (const option of options) {
    const m = /^bind_name=(true|false)$/.exec(option.trim());
    if (!m) {
      throw new RuleSyntaxError(
        `rule "${text}": unknown option "${option}" after ","; the one option is bind_name=false (for example cdn.example:443/tcp,bind_name=false)`,
      );
    }
    bindName = m[1] === 'true';
  }
  let rest = main.trim();
  let protocol: Protocol | undefined;
  const slash = rest.lastIndexOf('/');
  if (slash >= 0 && (PROTOCOLS as readonly string[]).includes(rest.slice(slash + 1))) {
    protocol = rest.slice(slash + 1) as Protocol;
    rest = rest.slice(0, slash);
  }
  let host = rest;
  let portText: string | undefined;
  if (rest.startsWith('[')) {
    const close = rest.indexOf(']');
    if (close < 0)
      throw new RuleSyntaxError(`rule "${text}": "[" without "]"; write IPv6 as [2001:db8::1]:443/tcp`);
    host = rest.slice(1, close);
    const after = rest.slice(close + 1);
    if (after !== '' && !after.startsWith(':'))
      throw new RuleSyntaxError(`rule "${text}": expected ":port" after "]"`);
    portText = after === '' ? undefined : after.slice(1);
  } else {
    const colon = rest.lastIndexOf(':');
    // One colon: host:port. More: an IPv6 address without a port.
    if (colon >= 0 && rest.indexOf(':') === colon) {
      host = rest.slice(0, colon);
      portText = rest.slice(colon + 1);
    }
  }
  if (host === '') throw new RuleSyntaxError(`rule "${text}": the host is missing`);
  const rule: CliRule = { host };
  if (portText !== undefined) {
    if (!/^\d{1,5}$/.test(portText) || Number(portText) < 1 || Number(portText) > 65535) {
      throw new RuleSyntaxError(`rule "${text}": the port must be an integer from 1 to 65535`);
    }
    rule.port = Number(portText);
  }
  if (protocol) rule.protocol = protocol;
  if (bindName !== undefined) rule.bind_name = bindName;
  return rule;
}

/** A rule (as the API answers it) in the syntax parseCliRule reads: "[2001:db8::1]:443/tcp,bind_name=false". */
export function formatCliRule(r: {
  host: string;
  port?: number;
  protocol: string;
  bind_name?: boolean;
}): string {
  const host = r.host.includes(':') && r.port !== undefined ? `[${r.host}]` : r.host;
  const port = r.port !== undefined ? `:${r.port}` : '';
  return `${host}${port}/${r.protocol}${r.bind_name === false ? ',bind_name=false' : ''}`;
}
