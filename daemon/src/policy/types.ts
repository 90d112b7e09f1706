/**
 * The policy model shared by the API (which validates and stores it), the
 * agent (which follows it) and the compiler (which turns it into map entries).
 * Everything here is already normalised: see host.ts for the host forms.
 */

export const MODES = ['unrestricted', 'allowlist', 'denylist', 'isolated'] as const;
export type Mode = (typeof MODES)[number];

export const PROTOCOLS = ['tcp', 'udp', 'any'] as const;
export type Protocol = (typeof PROTOCOLS)[number];

export interface Rule {
  /** Normalised: an address, a CIDR with host bits cleared, a hostname, or `*.` + hostname. */
  host: string;
  /** 1–65535; absent means every port. */
  port?: number;
  protocol: Protocol;
}

export interface Policy {
  mode: Mode;
  rules: Rule[];
  /** Isolated mode only: refuse DNS too (default: DNS is answered, as the seed says). */
  blockDns?: boolean;
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

export const UNRESTRICTED: Policy = Object.freeze({ mode: 'unrestricted', rules: [] }) as Policy;

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
