/**
 * Computers' policies (`policy` hash): read, replaced (with the change
 * record for the node's agent, atomically), and how a stored one reads,
 * including what older versions stored.
 */
import { DNS_MODES, type DnsMode, defaultDns, type Mode, type Policy, type Rule } from '../policy/types.js';
import { type Enforced, toEnforced } from './acks.js';
import type { Scope } from './computers.js';
import type { Connection } from './connection.js';
import { keys, templates } from './keys.js';

export interface PolicyRecord extends Policy {
  computerId: string;
  /** Always present in what the store reads (a policy stored before it existed reads as the default). */
  dns: DnsMode;
  /** Always present in what the store reads (a policy stored before it existed reads as false). */
  audit: boolean;
  /** `rules` as stored (JSON), so that a reply can carry them without parsing and serialising again. */
  rulesJson: string;
  version: number;
  updatedAt: string;
  enforced: Enforced | undefined;
}

export type PutPolicyResult =
  | { status: 'ok' | 'unchanged'; record: PolicyRecord }
  | { status: 'not_found' }
  | { status: 'precondition_failed'; version: number };

/** A computer's policy in a list: its mode, dns, audit and version, and the agent's report on it. */
export interface PolicyStatus {
  mode: Mode;
  dns: DnsMode;
  audit: boolean;
  version: number;
  enforced: Enforced | undefined;
}

/**
 * The `mode` field of a policy stored before `dns` existed, for an isolated
 * policy with `block_dns` (the option then had no field of its own). Read as
 * isolated with `dns` "none"; never written any more.
 */
const LEGACY_BLOCK_DNS_MODE = 'isolated+block_dns';

/**
 * A policy as Redis holds it, its rules parsed only when asked for: a GET
 * answers with the JSON as it is, and the agent's compile cache is keyed by
 * it, so a policy compiled before is not parsed again (never spread it:
 * that would parse them). `audit` is stored as '1' or '0' (absent, before
 * it existed: false).
 */
export function storedPolicy(
  stored: string | undefined,
  rulesJson: string,
  storedDns: string | undefined,
  storedAudit: string | undefined,
): Policy & { rulesJson: string; dns: DnsMode; audit: boolean } {
  let parsed: Rule[] | undefined;
  const rules = (): Rule[] => {
    parsed ??= JSON.parse(rulesJson) as Rule[];
    return parsed;
  };
  let mode = (stored ?? 'unrestricted') as Mode;
  let dns: DnsMode;
  if (stored === LEGACY_BLOCK_DNS_MODE) {
    mode = 'isolated';
    dns = 'none';
  } else if ((DNS_MODES as readonly string[]).includes(storedDns ?? '')) {
    dns = storedDns as DnsMode;
  } else {
    // Stored before `dns` existed: the default (only allowlist mode needs the rules for it).
    dns = mode === 'allowlist' ? defaultDns(mode, rules()) : defaultDns(mode, []);
  }
  return {
    mode,
    dns,
    audit: storedAudit === '1',
    rulesJson,
    get rules(): Rule[] {
      return rules();
    },
  };
}

export class Policies {
  constructor(
    private readonly conn: Connection,
    /** MAXLEN ~ of each node's change stream. */
    private readonly streamMaxLen: string,
  ) {}

  async get(id: string, scope: Scope): Promise<PolicyRecord | undefined> {
    const r = (await this.conn.run(
      'getPolicy',
      [keys.computer(id), keys.policy(id), keys.enforced(id)],
      [scope],
    )) as string[];
    if (r[0] !== 'ok') return undefined;
    const [
      ,
      mode,
      rulesJson = '[]',
      version,
      updatedAt,
      ackVersion,
      ackAt,
      ackState,
      ackReason,
      dns,
      revocation,
      audit,
    ] = r;
    // Onto the stored policy, not spread from it: spreading would parse its rules.
    return Object.assign(storedPolicy(mode, rulesJson, dns, audit), {
      computerId: id,
      version: Number(version),
      updatedAt: updatedAt ?? '',
      enforced: toEnforced(ackVersion, ackAt, ackState, ackReason, revocation),
    });
  }

  /**
   * Replaces a computer's policy (normalised already) and appends the change
   * record, atomically. `ifMatch` makes it a compare-and-set on the version.
   * `dns` is stored as its own field (absent: the default for mode and rules),
   * and so is `audit` ('1' or '0'; absent: false).
   */
  async put(
    id: string,
    policy: Policy,
    options: { scope?: Scope; ifMatch?: number; now?: Date },
  ): Promise<PutPolicyResult> {
    const now = (options.now ?? new Date()).toISOString();
    const rulesJson = JSON.stringify(policy.rules);
    const dns = policy.dns ?? defaultDns(policy.mode, policy.rules);
    const audit = policy.audit === true;
    const r = (await this.conn.run(
      'putPolicy',
      [keys.computer(id), keys.policy(id), keys.enforced(id), keys.version()],
      [
        options.scope ?? '',
        id,
        policy.mode,
        rulesJson,
        options.ifMatch === undefined ? '' : String(options.ifMatch),
        now,
        templates.nodeChanges,
        this.streamMaxLen,
        dns,
        audit ? '1' : '0',
      ],
      {
        what: `the change to the policy of computer "${id}"`,
        advice:
          `GET /api/v1/computers/${id}/network-policy once the store answers to see which. ` +
          'Repeating the same PUT (or DELETE) is safe: it leaves the same policy stored, under one version.',
      },
    )) as string[];
    const status = r[0];
    if (status === 'not_found') return { status };
    if (status === 'precondition_failed') return { status, version: Number(r[1]) };
    const [, version, updatedAt, ackVersion, ackAt, ackState, ackReason, revocation] = r;
    return {
      status: status === 'unchanged' ? 'unchanged' : 'ok',
      record: {
        computerId: id,
        mode: policy.mode,
        dns,
        audit,
        rules: policy.rules,
        rulesJson,
        version: Number(version),
        updatedAt: updatedAt ?? now,
        enforced: toEnforced(ackVersion, ackAt, ackState, ackReason, revocation),
      },
    };
  }

  /**
   * Each computer's policy status (for lists: two HMGETs a computer,
   * pipelined); a computer gone meanwhile reads as unrestricted, version 0.
   */
  async statuses(ids: string[]): Promise<Map<string, PolicyStatus>> {
    const redis = this.conn.redis;
    const rows = await this.conn.guard(() =>
      Promise.all(
        ids.map((id) =>
          Promise.all([
            redis.hmget(keys.policy(id), 'mode', 'version', 'dns', 'audit'),
            redis.hmget(keys.enforced(id), 'version', 'at', 'state', 'reason', 'revocation'),
          ]),
        ),
      ),
    );
    // A policy stored before `dns` existed: its default depends on its rules (allowlist only).
    const legacy = ids.filter((_, i) => {
      const [mode, , dns] = rows[i]?.[0] ?? [];
      return mode === 'allowlist' && !dns;
    });
    const legacyRules = new Map(
      await this.conn.guard(() =>
        Promise.all(
          legacy.map(async (id) => [id, (await redis.hget(keys.policy(id), 'rules')) ?? '[]'] as const),
        ),
      ),
    );
    const out = new Map<string, PolicyStatus>();
    rows.forEach(([[mode, version, dns, audit], [ackVersion, at, state, reason, revocation]], i) => {
      const id = ids[i] ?? '';
      const policy = storedPolicy(
        mode ?? undefined,
        legacyRules.get(id) ?? '[]',
        dns ?? undefined,
        audit ?? undefined,
      );
      out.set(id, {
        mode: policy.mode,
        dns: policy.dns,
        audit: policy.audit,
        version: Number(version ?? 0),
        enforced: toEnforced(ackVersion, at, state, reason, revocation),
      });
    });
    return out;
  }
}
