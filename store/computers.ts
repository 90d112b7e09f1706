/**
 * The computers registry (`computer` hash): each computer's cgroup path on
 * its node, its tenant and DNS upstream, and the indexes by node, cgroup
 * path and tenant that the Lua scripts keep with it.
 */
import type { Connection } from './connection.js';
import { channels, keys, templates } from './keys.js';

/** '' scope means every tenant (the admin); otherwise only that tenant's computers. */
export type Scope = string;

export interface Computer {
  id: string;
  /** Path relative to the cgroup2 mount, without leading or trailing '/'. */
  cgroup: string;
  node: string;
  tenant: string | null;
  /** The resolver the DNS proxy forwards the computer's queries to ("addr:port", "[v6]:port"); null: the agent's default. */
  dnsUpstream: string | null;
  createdAt: string;
  updatedAt: string;
}

export type PutComputerResult =
  | { status: 'created' | 'updated' | 'unchanged'; computer: Computer }
  | { status: 'not_found' | 'node_required' }
  | { status: 'cgroup_in_use' | 'cgroup_nested'; owner: string };

/** What a computer's registration takes; see Computers.put. */
export interface ComputerInput {
  cgroup: string;
  node?: string | undefined;
  tenant?: string | null | undefined;
  dnsUpstream?: string | null | undefined;
}

/** KEYS of PUT_COMPUTER and DELETE_COMPUTER: everything of a computer, the version counter and the index. */
function computerScriptKeys(id: string): string[] {
  return [
    keys.computer(id),
    keys.policy(id),
    keys.enforced(id),
    keys.version(),
    keys.computers(),
    keys.events(id),
    keys.learned(id),
    keys.observed(id),
  ];
}

function toComputer(h: Record<string, string>): Computer | undefined {
  if (h['id'] === undefined) return undefined;
  return {
    id: h['id'],
    cgroup: h['cgroup'] ?? '',
    node: h['node'] ?? '',
    tenant: h['tenant'] ? h['tenant'] : null,
    dnsUpstream: h['dns_upstream'] ? h['dns_upstream'] : null,
    createdAt: h['created_at'] ?? '',
    updatedAt: h['updated_at'] ?? '',
  };
}

export class Computers {
  constructor(
    private readonly conn: Connection,
    /** MAXLEN ~ of each node's change stream. */
    private readonly streamMaxLen: string,
  ) {}

  async get(id: string, scope: Scope): Promise<Computer | undefined> {
    const h = await this.conn.guard(() => this.conn.redis.hgetall(keys.computer(id)));
    const computer = toComputer(h);
    if (!computer || (scope !== '' && computer.tenant !== scope)) return undefined;
    return computer;
  }

  /**
   * Registers or updates a computer. `node` absent keeps the current node
   * (or takes `defaultNode` for a new computer); `tenant` absent keeps the
   * current tenant (none for a new computer), null sets none; so does
   * `dnsUpstream` (stored form: api/validation.ts normaliseDnsUpstream). A
   * change of it alone appends a change record with the policy's current
   * version, so that the agent re-reads the computer (no new version).
   */
  async put(
    id: string,
    input: ComputerInput,
    options: { scope?: Scope; defaultNode?: string; now?: Date },
  ): Promise<PutComputerResult> {
    const now = (options.now ?? new Date()).toISOString();
    const r = (await this.conn.run(
      'putComputer',
      computerScriptKeys(id),
      [
        options.scope ?? '',
        id,
        input.cgroup,
        input.node ?? '',
        options.defaultNode ?? '',
        input.tenant ?? '',
        input.tenant === undefined ? '0' : '1',
        now,
        templates.nodeComputers,
        templates.nodeCgroups,
        templates.nodeChanges,
        templates.tenantComputers,
        this.streamMaxLen,
        templates.nodeCgroupPaths,
        input.dnsUpstream ?? '',
        input.dnsUpstream === undefined ? '0' : '1',
      ],
      {
        what: `the registration of computer "${id}"`,
        advice:
          `GET /api/v1/computers/${id} once the store answers to see which. ` +
          'Repeating the same PUT is safe (it answers 200 with the computer as stored).',
      },
    )) as string[];
    const status = r[0];
    if (status === 'not_found' || status === 'node_required') return { status };
    if (status === 'cgroup_in_use' || status === 'cgroup_nested') return { status, owner: r[1] ?? '' };
    const [, cgroup = '', node = '', tenant = '', createdAt = '', updatedAt = '', dnsUpstream = ''] = r;
    return {
      status: status as 'created' | 'updated' | 'unchanged',
      computer: {
        id,
        cgroup,
        node,
        tenant: tenant === '' ? null : tenant,
        dnsUpstream: dnsUpstream === '' ? null : dnsUpstream,
        createdAt,
        updatedAt,
      },
    };
  }

  /**
   * Removes a computer with everything that belongs to it (policy,
   * acknowledgement, deny events, learned names); false if there is none (in scope).
   */
  async delete(id: string, scope: Scope, now: Date): Promise<boolean> {
    const r = (await this.conn.run(
      'deleteComputer',
      computerScriptKeys(id),
      [
        scope,
        id,
        now.toISOString(),
        templates.nodeComputers,
        templates.nodeCgroups,
        templates.nodeChanges,
        templates.tenantComputers,
        this.streamMaxLen,
        templates.nodeCgroupPaths,
        channels.computerDeleted,
      ],
      {
        what: `the deletion of computer "${id}"`,
        advice:
          `GET /api/v1/computers/${id} once the store answers to see which (404: it is gone). ` +
          'Repeating the DELETE is safe (404 computer_not_found then means it is gone).',
      },
    )) as string[];
    return r[0] === 'ok';
  }

  /**
   * One page of computers ordered by id, after `cursor` (an id, exclusive).
   * With both a scope and a node, a page may hold fewer than `limit`
   * computers while `nextCursor` is set: follow it until it is null.
   */
  async list(options: {
    scope?: Scope;
    node?: string;
    cursor?: string;
    limit: number;
  }): Promise<{ computers: Computer[]; nextCursor: string | null }> {
    const redis = this.conn.redis;
    const scope = options.scope ?? '';
    const index =
      scope !== ''
        ? keys.tenantComputers(scope)
        : options.node !== undefined
          ? keys.nodeComputers(options.node)
          : keys.computers();
    const start = options.cursor ? `(${options.cursor}` : '-';
    const ids = await this.conn.guard(() =>
      redis.zrangebylex(index, start, '+', 'LIMIT', 0, options.limit + 1),
    );
    const more = ids.length > options.limit;
    const page = ids.slice(0, options.limit);
    const hashes = await this.conn.guard(() =>
      Promise.all(page.map((id) => redis.hgetall(keys.computer(id)))),
    );
    const computers: Computer[] = [];
    for (const h of hashes) {
      const c = toComputer(h);
      if (!c) continue;
      if (scope !== '' && c.tenant !== scope) continue;
      if (options.node !== undefined && c.node !== options.node) continue;
      computers.push(c);
    }
    return { computers, nextCursor: more ? (page[page.length - 1] ?? null) : null };
  }
}
