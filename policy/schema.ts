/**
 * The policy body's schema: validates and normalises what a client sends
 * (mode, rules with their bind_name, dns, audit, and the `block_dns` of older
 * clients) into a Policy, and checks computer ids. Failures are PolicyErrors
 * naming the field path (`rules[3].port: must be an integer from 1 to 65535`).
 */
import { z } from 'zod';
import { type FieldIssue, PolicyError } from './errors.js';
import { HostError, normaliseHost } from './host.js';
import {
  COMPUTER_ID_PATTERN,
  DNS_MODES,
  defaultDns,
  dnsProblem,
  isNameRule,
  MODES,
  modeTakesRules,
  type Policy,
  PROTOCOLS,
  type Rule,
} from './types.js';

/** The seed's text, verbatim. */
const RULES_REQUIRED = 'rules required for allowlist/denylist mode';

const COMPUTER_ID_MESSAGE =
  'must be a name of A-Z, a-z, 0-9, ".", "_" or "-" starting with a letter or digit, optionally after "<tenant>~", at most 200 characters';

const PORT_MESSAGE = 'must be an integer from 1 to 65535';

/**
 * normaliseHost is pure, and policies repeat the same hosts (github.com,
 * pypi.org, ...) across computers, so successful results are memoised; the
 * memo is dropped whole when it reaches MEMO_MAX entries. (Parsing a hostname
 * costs tens of microseconds, most of it in ipaddr.js ruling out an address.)
 */
const MEMO_MAX = 50_000;
const normalised = new Map<string, string>();
function normaliseHostMemo(text: string): string {
  const hit = normalised.get(text);
  if (hit !== undefined) return hit;
  const value = normaliseHost(text);
  if (normalised.size >= MEMO_MAX) normalised.clear();
  normalised.set(text, value);
  return value;
}

const host = z
  .string({ error: 'must be a string: an address, a CIDR block or a hostname' })
  .transform((text, ctx) => {
    try {
      return normaliseHostMemo(text);
    } catch (err) {
      if (!(err instanceof HostError)) throw err;
      ctx.issues.push({ code: 'custom', message: err.message, input: text });
      return z.NEVER;
    }
  });

const rule = z
  .strictObject({
    host,
    port: z
      .int({ error: PORT_MESSAGE })
      .min(1, { error: PORT_MESSAGE })
      .max(65535, { error: PORT_MESSAGE })
      .optional(),
    protocol: z.enum(PROTOCOLS, { error: `must be one of ${PROTOCOLS.join(', ')}` }).default('any'),
    /** Name-binding (see Rule.bind_name); hostname and wildcard rules only. Absent: true. */
    bind_name: z.boolean({ error: 'must be true or false' }).optional(),
  })
  .check((ctx) => {
    const r = ctx.value;
    // Either value is refused on an address rule: it is never bound, so true would claim what is not.
    // (A host that did not parse is an issue already: nothing to add.)
    if (r.bind_name !== undefined && typeof r.host === 'string' && !isNameRule(r)) {
      ctx.issues.push({
        code: 'custom',
        path: ['bind_name'],
        message: `name-binding applies only to hostname and wildcard rules, and "${r.host}" is an address or CIDR block (allowed by its address alone): remove bind_name from this rule`,
        input: r.bind_name,
      });
    }
  });

const policyBody = z.strictObject({
  mode: z.enum(MODES, { error: `must be one of ${MODES.join(', ')}` }),
  rules: z.array(rule, { error: 'must be an array of rules' }).optional(),
  dns: z.enum(DNS_MODES, { error: `must be one of ${DNS_MODES.join(', ')}` }).optional(),
  /** Before `dns`: true is `"dns": "none"`. Replies still carry it (`dns` is "none"). */
  block_dns: z.boolean({ error: 'must be true or false' }).optional(),
  /** Refusals let through and reported (see Policy.audit); absent: false. */
  audit: z.boolean({ error: 'must be true or false' }).default(false),
});

/** Validates and normalises a policy body; `dns` and `audit` are always set in what it returns. */
export function parsePolicy(body: unknown, maxRules: number): Policy {
  if (isObject(body) && Array.isArray(body['rules']) && body['rules'].length > maxRules) {
    throw new PolicyError(
      'too_many_rules',
      `rules: at most ${maxRules} rules per policy, got ${body['rules'].length}; merge rules into CIDR blocks or wildcards`,
    );
  }
  const parsed = policyBody.safeParse(body);
  if (!parsed.success) {
    const { message, details } = describeIssues(parsed.error.issues);
    throw new PolicyError('invalid_request', message, details);
  }
  const { mode, rules = [], dns: given, block_dns: blockDns, audit } = parsed.data;
  if (modeTakesRules(mode) && rules.length === 0) {
    throw new PolicyError('rules_required', RULES_REQUIRED);
  }
  if (!modeTakesRules(mode) && rules.length > 0) {
    throw new PolicyError(
      'rules_not_allowed',
      `rules: ${mode} mode takes no rules; send "rules": [] or leave it out, or use allowlist or denylist`,
    );
  }
  // Fixed key order (see Rule), so that equal policies serialise to equal JSON; bind_name only
  // when false, so that policies without it stay as they were stored before it existed.
  const normalisedRules: Rule[] = rules.map(normaliseRule);
  if (blockDns !== undefined && given !== undefined && blockDns !== (given === 'none')) {
    throw new PolicyError(
      'dns_not_allowed',
      `block_dns: ${blockDns} contradicts "dns": "${given}" (block_dns true is "dns": "none"); send dns alone`,
    );
  }
  // block_dns is a way of saying dns: the policy carries only dns (and the store only stores that).
  const dns = given ?? (blockDns ? 'none' : defaultDns(mode, normalisedRules));
  const problem = dnsProblem(mode, normalisedRules, dns);
  if (problem !== undefined) {
    const said =
      given === undefined && blockDns
        ? `block_dns: true is "dns": "none", which does not fit: ${problem}`
        : problem;
    throw new PolicyError('dns_not_allowed', said);
  }
  return { mode, rules: normalisedRules, dns, audit };
}

function normaliseRule(r: z.output<typeof rule>): Rule {
  const out: Rule =
    r.port === undefined
      ? { host: r.host, protocol: r.protocol }
      : { host: r.host, port: r.port, protocol: r.protocol };
  if (r.bind_name === false) out.bind_name = false;
  return out;
}

/** Checks a computer id (COMPUTER_ID_PATTERN), as given in a path (`id`). */
export function checkComputerId(id: string): string {
  if (!COMPUTER_ID_PATTERN.test(id)) {
    throw new PolicyError('invalid_request', `id: ${COMPUTER_ID_MESSAGE}`, [
      { path: 'id', message: COMPUTER_ID_MESSAGE },
    ]);
  }
  return id;
}

/**
 * Zod issues as one message (the first five, `path: message`) and each
 * field's problem; an unknown field is one issue per field.
 */
export function describeIssues(issues: readonly z.core.$ZodIssue[]): {
  message: string;
  details: FieldIssue[];
} {
  const details: FieldIssue[] = [];
  for (const issue of issues) {
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys) {
        details.push({ path: formatPath([...issue.path, key]), message: 'unknown field; remove it' });
      }
    } else {
      details.push({ path: formatPath(issue.path), message: issue.message });
    }
  }
  const shown = details
    .slice(0, 5)
    .map((d) => (d.path === '' ? `body: ${d.message}` : `${d.path}: ${d.message}`));
  const more = details.length > 5 ? `; and ${details.length - 5} more` : '';
  return { message: shown.join('; ') + more, details };
}

/** `['rules', 3, 'port']` → `rules[3].port`. */
function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`;
    else out += out === '' ? String(part) : `.${String(part)}`;
  }
  return out;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
