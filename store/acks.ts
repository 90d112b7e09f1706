/**
 * The agent's acknowledgements (`enforced` hash): its report on a version of
 * a computer's policy, and the API requests that wait for one (woken by the
 * `enforced` channel, see Notifications).
 */
import type { Connection } from './connection.js';
import { channels, keys } from './keys.js';

/**
 * What the agent reports of a computer's policy (`enforced` hash):
 * - `enforced`: in force;
 * - `dns_ports_exhausted`: in force with DNS refused (no proxy port was free);
 * - `cgroup_missing`: the cgroup does not exist (yet, or any more): nothing attached;
 * - `cgroup_forbidden`: the agent refuses to attach to that cgroup (its own,
 *   an ancestor of its own or of Redis's, or outside its sandbox roots);
 * - `version_regressed`: the agent refuses this version, older than the one
 *   it enforces for the computer (the store lost later writes: a Redis
 *   failover); the newer one stays in force, not this one.
 */
export const AGENT_STATES = [
  'enforced',
  'dns_ports_exhausted',
  'cgroup_missing',
  'cgroup_forbidden',
  'version_regressed',
] as const;
export type AgentState = (typeof AGENT_STATES)[number];

/** States in which the policy is in force in the kernel (at least as strictly as asked). */
export function inForce(state: AgentState): boolean {
  return state === 'enforced' || state === 'dns_ports_exhausted';
}

/**
 * What became of the connections a policy no longer allows when the agent
 * put it in force (live revocation):
 * - `{ state: 'on', revoked }`: every one was closed, `revoked` of them;
 * - `off`: the agent was told not to (--revocation off);
 * - `unsupported`: this kernel cannot close them (see the README's kernel table);
 * - `failed`: the agent tried and could not finish (its log says why).
 * Undefined: the agent did not say (an earlier agent, or a report that enforces nothing).
 */
export type Revocation =
  | { state: 'on'; revoked: number }
  | { state: 'off' | 'unsupported' | 'failed'; revoked?: undefined };

/** Revocation as one word (the `revocation` field and the channel's message): on:<n>, off, unsupported, failed. */
export function formatRevocation(r: Revocation | undefined): string {
  if (r === undefined) return '-';
  return r.state === 'on' ? `on:${r.revoked}` : r.state;
}

export function parseRevocation(word: string | null | undefined): Revocation | undefined {
  const on = /^on:(\d+)$/.exec(word ?? '');
  if (on) return { state: 'on', revoked: Number(on[1]) };
  return word === 'off' || word === 'unsupported' || word === 'failed' ? { state: word } : undefined;
}

const REVOCATION_WORD = /^(?:on:\d+|off|unsupported|failed|-)$/;

/** The agent's acknowledgement: the version it reports on, since when, its state, and why (when not enforced). */
export interface Enforced {
  version: number;
  at: string;
  state: AgentState;
  /** What the agent found (the cgroup path it looked for, why it refuses it); '' when there is nothing to say. */
  reason: string;
  revocation?: Revocation;
}

/** An acknowledgement as stored (or published); undefined when there is none. */
export function toEnforced(
  version: string | null | undefined,
  at: string | null | undefined,
  state: string | null | undefined,
  reason: string | null | undefined,
  revocation?: string | null,
): Enforced | undefined {
  if (!version) return undefined;
  // An older agent wrote no state: it acknowledged only what it enforced.
  const known = (AGENT_STATES as readonly string[]).includes(state ?? '');
  const revoked = parseRevocation(revocation);
  return {
    version: Number(version),
    at: at ?? '',
    state: known ? (state as AgentState) : 'enforced',
    reason: reason ?? '',
    ...(revoked ? { revocation: revoked } : {}),
  };
}

export class Acks {
  /** Per computer id, the wake-up functions of the requests waiting for its acknowledgement. */
  private readonly waiters = new Map<string, Set<(ack?: Enforced) => void>>();

  constructor(
    private readonly conn: Connection,
    /** How often a waiter reads even without a notification (see StoreOptions.waitPollMs). */
    private readonly waitPollMs: number,
  ) {}

  /** A message of the `enforced` channel: wakes the computer's waiters with the report it carries. */
  notice(message: string): void {
    const [id = '', version, at, state, ...rest] = message.split(' ');
    // "<id> <version> <at> <state> <revocation>[ <reason>]"; an older writer's has no revocation word,
    // and "<id> <version>" makes waiters read the key.
    const revocation = REVOCATION_WORD.test(rest[0] ?? '') ? rest.shift() : undefined;
    const ack =
      at !== undefined && Number.isSafeInteger(Number(version))
        ? toEnforced(version, at, state, rest.join(' '), revocation)
        : undefined;
    for (const wake of this.waiters.get(id) ?? []) wake(ack);
  }

  /** Notifications may have been lost (the subscriber reconnected): every waiter reads. */
  wakeAll(): void {
    for (const set of this.waiters.values()) for (const wake of set) wake();
  }

  /** The agent's acknowledgement for a computer, if any. */
  async get(id: string): Promise<Enforced | undefined> {
    const [version, at, state, reason, revocation] = await this.conn.guard(() =>
      this.conn.redis.hmget(keys.enforced(id), 'version', 'at', 'state', 'reason', 'revocation'),
    );
    return toEnforced(version, at, state, reason, revocation);
  }

  /**
   * Waits until the agent reports on `version` (or a later one) of the
   * computer's policy, or `timeoutMs` passes; returns the last report seen.
   * Any report settles it (a PUT answers at once that the cgroup is missing),
   * unless `pastMissing`: then `cgroup_missing` is waited past, for a caller
   * that knows the cgroup is about to appear.
   * Registers for the notification first, then reads, so none is lost.
   */
  async wait(
    id: string,
    version: number,
    timeoutMs: number,
    options: { pastMissing?: boolean } = {},
  ): Promise<Enforced | undefined> {
    const deadline = Date.now() + timeoutMs;
    const settled = (a: Enforced | undefined): a is Enforced =>
      a !== undefined && a.version >= version && !(options.pastMissing && a.state === 'cgroup_missing');
    let notified = false;
    let wakeNow: (() => void) | undefined;
    /** The newest report of `version` or later that a notification carried. */
    let pushed: Enforced | undefined;
    const wake = (ack?: Enforced) => {
      if (ack !== undefined) {
        if (ack.version < version) return; // an earlier version: nothing to read
        pushed = ack;
      }
      notified = true;
      wakeNow?.();
    };
    let set = this.waiters.get(id);
    if (!set) {
      set = new Set();
      this.waiters.set(id, set);
    }
    set.add(wake);
    let last: Enforced | undefined;
    try {
      for (;;) {
        notified = false;
        if (settled(pushed)) return pushed;
        try {
          last = await this.get(id);
        } catch {
          // Redis went away mid-wait: answer with what we know.
          return pushed ?? last;
        }
        if (settled(last)) return last;
        if (settled(pushed)) return pushed;
        const left = deadline - Date.now();
        if (left <= 0) return pushed ?? last;
        if (notified) continue;
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, Math.min(left, this.waitPollMs));
          wakeNow = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        wakeNow = undefined;
      }
    } finally {
      set.delete(wake);
      if (set.size === 0) this.waiters.delete(id);
    }
  }

  /**
   * The agent's report on `version` of the computer's policy since `at`: its
   * state, and why when it is not enforced (`reason`, one line). Never moves
   * back; wakes waiting API requests. False when it did not apply (the
   * computer is gone, or a later version is acknowledged already).
   */
  async ack(
    id: string,
    version: number,
    at: Date,
    node: string,
    state: AgentState,
    reason: string,
    revocation?: Revocation,
  ): Promise<boolean> {
    const r = await this.conn.run(
      'ackEnforced',
      [keys.computer(id), keys.enforced(id)],
      [
        id,
        String(version),
        at.toISOString(),
        node,
        channels.enforced,
        state,
        reason.replace(/\s+/g, ' '),
        formatRevocation(revocation),
      ],
    );
    return r === 1;
  }
}
