/**
 * The policy model shared by the API (which validates and stores it), the
 * agent (which follows it) and the compiler (which turns it into map entries).
 * Everything here is already normalised: see host.ts for the host forms.
 */
import { parseHost } from './host.js';

export const MODES = ['unrestricted', 'allowlist', 'denylist', 'isolated'] as const;
export type Mode = (typeof MODES)[number];

export const PROTOCOLS = ['tcp', 'udp', 'any'] as const;
export type Protocol = (typeof PROTOCOLS)[number];

/**
 * A normalised rule. Its keys are always in this order (host, port,
 * protocol, bind_name), so that equal rules serialise to equal JSON: the
 * store keeps `rules` as that JSON, and replies splice it in as it is.
 */
export interface Rule {
  /** Normalised: an address, a CIDR with host bits cleared, a hostname, or `*.` + hostname. */
  host: string;
  /** 1–65535; absent means every port. */
  port?: number;
  protocol: Protocol;
  /**
   * Name-binding (hostname and wildcard rules only; absent means bound, the
   * default). An address that the computer may reach only because this
   * rule's name taught it is bound to the names it was learned for: a
   * connection's first bytes must be a TLS ClientHello whose server_name,
   * or an HTTP/1.x request whose Host, is one of them (else a deny event
   * with reason `name_mismatch`), and UDP to its port 443 (QUIC, which
   * the kernel cannot read) is refused (reason `quic`) unless a rule naming
   * it says `"protocol": "udp"`. `false`: the rule's addresses are judged
   * by address alone (neither check), for an operator who knows they serve
   * only trusted names. Present only when false: a stored rule never
   * carries `true`.
   */
  bind_name?: false;
}

/**
 * What the DNS proxy resolves for a computer (DNS is itself a way out: a
 * query carries its name to whoever is authoritative for it):
 * - `listed`: only names that the hostname rules cover (A, AAAA, CNAME,
 *   HTTPS and SVCB; other types are answered empty); every other name is
 *   answered NXDOMAIN by the proxy and never forwarded. Allowlist only.
 * - `all`: every name, every type, forwarded.
 * - `none`: nothing; every query is answered NXDOMAIN by the proxy, never
 *   forwarded (see the DNS proxy's notes on why not REFUSED).
 */
export const DNS_MODES = ['listed', 'all', 'none'] as const;
export type DnsMode = (typeof DNS_MODES)[number];

export interface Policy {
  mode: Mode;
  rules: Rule[];
  /** What the DNS proxy resolves; absent: defaultDns(mode, rules). */
  dns?: DnsMode;
  /**
   * Audit: the policy is judged exactly as in enforcement, but what it would
   * refuse is let through and reported (deny events marked `audit`); the DNS
   * proxy forwards what it would answer NXDOMAIN. Absent: false.
   */
  audit?: boolean;
  /**
   * `rules` as JSON, when the reader has it already (the agent reads it from
   * Redis): the enforcer keys its compile cache by it without serialising
   * the rules again. It must be exactly what `rules` was parsed from.
   */
  rulesJson?: string;
}

/** Modes whose rules decide; the others take no rules. */
export function modeTakesRules(mode: Mode): boolean {
  return mode === 'allowlist' || mode === 'denylist';
}

export const UNRESTRICTED: Policy = Object.freeze({ mode: 'unrestricted', rules: [], dns: 'all' }) as Policy;

/** Whether a rule's host is a hostname or a wildcard (not an address or CIDR block). */
export function isNameRule(rule: Pick<Rule, 'host'>): boolean {
  return parseHost(rule.host).kind !== 'cidr';
}

/**
 * The `dns` of a policy that does not say: `listed` in allowlist mode with
 * hostname rules, `none` in allowlist mode without (listed would resolve
 * nothing: say so), `all` in every other mode (the seed: DNS works in
 * isolated mode).
 */
export function defaultDns(mode: Mode, rules: readonly Rule[]): DnsMode {
  if (mode !== 'allowlist') return 'all';
  return rules.some(isNameRule) ? 'listed' : 'none';
}

/** The policy's `dns`, or its default. */
export function dnsOf(policy: Policy): DnsMode {
  return policy.dns ?? defaultDns(policy.mode, policy.rules);
}

/**
 * Why `dns` does not fit the mode and rules, with what to change; undefined
 * when it fits. In unrestricted mode DNS does not pass the proxy: only `all`
 * (what happens there) fits, so that a GET's body can be sent back.
 */
export function dnsProblem(mode: Mode, rules: readonly Rule[], dns: DnsMode): string | undefined {
  if (mode === 'unrestricted') {
    return dns === 'all'
      ? undefined
      : `dns: unrestricted mode does not send DNS through the proxy, so "${dns}" cannot apply; leave dns out, or choose allowlist, denylist or isolated mode`;
  }
  if (dns === 'listed') {
    if (mode !== 'allowlist') {
      const why =
        mode === 'denylist' ? "a denylist's rules name what to refuse" : `${mode} mode has no rules`;
      return `dns: "listed" resolves the names that an allowlist's hostname rules cover, and ${why}: use "all" (the default) or "none"`;
    }
    if (!rules.some(isNameRule)) {
      return 'dns: "listed" resolves only names that hostname rules cover, and every rule here is an address or CIDR block, so nothing would resolve: add a hostname rule (for example {"host": "pypi.org"}), or send "none" (no DNS, the default here) or "all"';
    }
  }
  if (dns === 'none' && mode === 'allowlist') {
    const named = rules.findIndex(isNameRule);
    if (named >= 0) {
      return `dns: "none" resolves nothing, so the hostname rules (rules[${named}].host "${rules[named]!.host}") would never match: use "listed" (the default with hostname rules), or remove them`;
    }
  }
  return undefined;
}

/**
 * Computer ids: a name of [A-Za-z0-9._-] starting with a letter or digit, or
 * `<tenant>~<name>` (the namespace of a tenant's own computers: tenant names
 * have no "~"); at most 200 characters in all (also safe as a bpffs file name).
 */
export const COMPUTER_ID_SOURCE = '^(?=.{1,200}$)(?:[A-Za-z0-9][A-Za-z0-9._-]*~)?[A-Za-z0-9][A-Za-z0-9._-]*$';
export const COMPUTER_ID_PATTERN = new RegExp(COMPUTER_ID_SOURCE);

/** The id namespace of a tenant's computers: ids that begin with this. */
export function tenantNamespace(tenant: string): string {
  return `${tenant}~`;
}
