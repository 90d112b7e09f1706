/**
 * A store that comes back empty never unlocks computers silently. The agent
 * remembers the id of the store it follows (store/identity.ts), in memory
 * and in a file of its state directory, and checks it at the start of every
 * full resync (so at start and after every reconnect) and every
 * `storeCheckMs` while it follows:
 *
 * - the same id: follow it;
 * - no id remembered (an agent that never followed a store, or whose file
 *   is gone): follow the store it finds, making its identity when it has
 *   none (a fresh install: the first of API and agent makes it);
 * - the id missing or another one, not accepted: `store_lost`. The agent
 *   keeps everything it enforces (no detach, nothing applied or acknowledged
 *   from the new store), logs an error once, sets egressd_store_lost, says so
 *   in its node status, and checks again every `storeCheckMs`;
 * - another id whose `replaces` holds the remembered one (an operator ran
 *   `egressd store accept`): adopt it. Versions start again in a new store,
 *   so the agent's version memory is reset, and the resync that follows
 *   brings the node to what the new store holds (detaching what it lacks).
 *
 * A failover to an older copy of the same store keeps the id: no reset there,
 * version_regressed still protects (versions.ts).
 *
 * judge() is pure (unit-tested); StoreFollower does the I/O around it.
 */
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { EgressdError } from '../../policy/errors.js';
import type { NodeStoreState, StoreIdentity } from '../../store/store.js';
import type { AgentOptions } from './options.js';

export type Verdict =
  /** The store the agent remembers. */
  | { kind: 'same' }
  /** Follow `id` from now on: the first store met, or one accepted in place of the remembered one. */
  | { kind: 'adopt'; id: string; accepted: boolean }
  /** Never followed a store, and this one has no identity: make it, then adopt it. */
  | { kind: 'make' }
  /** The remembered store is gone: `found` is the id there now ('' for none). */
  | { kind: 'lost'; found: string };

/** What to do with the store found, given the id remembered (undefined: none). */
export function judge(remembered: string | undefined, found: StoreIdentity | undefined): Verdict {
  if (remembered === undefined)
    return found ? { kind: 'adopt', id: found.id, accepted: false } : { kind: 'make' };
  if (!found) return { kind: 'lost', found: '' };
  if (found.id === remembered) return { kind: 'same' };
  if (found.replaces.includes(remembered)) return { kind: 'adopt', id: found.id, accepted: true };
  return { kind: 'lost', found: found.id };
}

/** What the operator reads when the store is lost: what happened and what to do. */
export function lostMessage(node: string, remembered: string, found: string): string {
  const what =
    found === ''
      ? 'holds no store identity: Redis came back empty (restarted without persistence, replaced, or flushed)'
      : `is another store (id ${found}): Redis was replaced or restored from elsewhere`;
  return (
    `node ${node} follows the store of id ${remembered}, and the Redis it reaches now ${what}. ` +
    'It keeps every policy it enforces and applies nothing from this store until an operator accepts it: ' +
    'PUT every computer and its policy again from the control plane, then run `egressd store accept` ' +
    '(POST /api/v1/store/accept); computers the new store lacks are then detached'
  );
}

/** The result of a check for the agent's resync: follow, follow with versions reset (`adopted`), or not at all. */
export type Check = 'follow' | 'adopted' | 'lost';

export class StoreFollower {
  private remembered: string | undefined;
  private lost: { found: string; since: number } | undefined;
  private checkedAt = 0;

  constructor(
    private readonly opts: Pick<
      AgentOptions,
      'store' | 'node' | 'metrics' | 'storeIdFile' | 'onStoreState'
    > & {
      log: Logger;
      checkMs: number;
    },
  ) {
    this.remembered = this.load();
    opts.metrics?.storeLost.set(0);
  }

  /** At the start of every full resync. */
  async check(): Promise<Check> {
    let found = await this.opts.store.storeIdentity();
    let verdict = judge(this.remembered, found);
    if (verdict.kind === 'make') {
      found = await this.opts.store.ensureStoreIdentity();
      verdict = judge(undefined, found);
    }
    this.checkedAt = Date.now();
    switch (verdict.kind) {
      case 'same':
        this.setLost(undefined);
        return 'follow';
      case 'lost':
        this.setLost(verdict.found);
        return 'lost';
      case 'adopt': {
        const from = this.remembered;
        this.save(verdict.id);
        this.remembered = verdict.id;
        if (verdict.accepted) {
          this.opts.log.warn(
            { store: verdict.id, replaces: from },
            'an operator accepted this store in place of the lost one: following it, versions start again, computers it lacks are detached',
          );
        } else this.opts.log.info({ store: verdict.id }, 'following the store');
        this.setLost(undefined);
        return verdict.accepted ? 'adopted' : 'follow';
      }
    }
    throw new Error('unreachable');
  }

  /** While following: true (at most every checkMs) when the store's id is no longer the one remembered. */
  async changed(): Promise<boolean> {
    if (Date.now() - this.checkedAt < this.opts.checkMs) return false;
    this.checkedAt = Date.now();
    return (await this.opts.store.storeIdentity())?.id !== this.remembered;
  }

  /** For the node status; undefined before the first check. */
  state(): NodeStoreState | undefined {
    if (this.remembered === undefined) return undefined;
    return this.lost
      ? { state: 'lost', id: this.remembered, found: this.lost.found, since: this.lost.since }
      : { state: 'following', id: this.remembered };
  }

  private setLost(found: string | undefined): void {
    const was = this.lost;
    if (found === undefined) {
      if (!was) return;
      this.lost = undefined;
      this.opts.log.warn({ store: this.remembered }, 'store no longer lost');
    } else if (was?.found !== found) {
      this.lost = { found, since: was?.since ?? Date.now() };
      // Once per store found: the same one checked again says nothing more.
      this.opts.log.error(
        { store: this.remembered, found },
        lostMessage(this.opts.node, this.remembered ?? '', found),
      );
    } else return;
    this.opts.metrics?.storeLost.set(this.lost ? 1 : 0);
    this.opts.onStoreState?.();
  }

  /** The id remembered in the file, undefined when there is none (or no file is kept). */
  private load(): string | undefined {
    const file = this.opts.storeIdFile;
    if (file === undefined) return undefined;
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    try {
      const id = (JSON.parse(text) as { store_id?: unknown }).store_id;
      if (typeof id === 'string' && id !== '') return id;
    } catch {}
    // Fail closed: an unreadable memory is not "never followed a store".
    throw new EgressdError(
      'BAD_STATE_FILE',
      `${file} does not hold the id of the store this agent follows: remove it only if this host should follow whatever store its Redis holds now`,
    );
  }

  private save(id: string): void {
    const file = this.opts.storeIdFile;
    if (file === undefined) return;
    mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    const tmp = `${file}.tmp`;
    writeFileSync(
      tmp,
      `${JSON.stringify({ store_id: id, node: this.opts.node, since: new Date().toISOString() })}\n`,
      { mode: 0o600 },
    );
    renameSync(tmp, file);
  }
}
