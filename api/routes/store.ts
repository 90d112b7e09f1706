/**
 * The store's identity and the operator's resync after a lost store, admin
 * only (store/identity.ts, daemon/agent/store-identity.ts):
 *
 * - GET /api/v1/store: the store's id, when it was made, the lost stores it
 *   replaces, and the nodes whose agent reports its store lost.
 * - POST /api/v1/store/accept: records that this store replaces the lost
 *   ones (the ids the nodes report, or those the body names), so that their
 *   agents follow it: they reset their versions and resync, detaching every
 *   computer this store lacks. PUT the computers and policies again first.
 *   Repeating it is safe; ids are only ever added.
 */
import type { NodeStatus } from '../../store/store.js';
import { STORE_ID } from '../../store/store.js';
import { readJson } from '../body.js';
import { ApiError } from '../errors.js';
import { type ApiRouter, type RouteDeps, requireAdmin, requireKey } from './deps.js';

export const STORE_PATH = '/api/v1/store';
export const STORE_ACCEPT_PATH = '/api/v1/store/accept';

/** The nodes whose agent reports that the store it follows is lost. */
function lostNodes(nodes: NodeStatus[]) {
  return nodes.flatMap((n) =>
    n.store?.state === 'lost'
      ? [
          {
            node: n.node,
            lost_id: n.store.id,
            found_id: n.store.found || null,
            since: new Date(n.store.since ?? n.seenAt).toISOString(),
          },
        ]
      : [],
  );
}

/** The ids an accept body names ({"lost": ["<32 hex digits>", ...]}), or undefined when it names none. */
function parseAcceptBody(body: unknown): string[] | undefined {
  if (body === undefined) return undefined;
  const lost = (body as { lost?: unknown } | null)?.lost;
  const keys = body !== null && typeof body === 'object' && !Array.isArray(body) ? Object.keys(body) : ['?'];
  if (keys.some((k) => k !== 'lost')) {
    throw new ApiError(400, 'invalid_request', 'body: give {} or {"lost": ["<store id>", ...]} only');
  }
  if (lost === undefined) return undefined;
  if (
    !Array.isArray(lost) ||
    lost.length === 0 ||
    lost.some((id) => typeof id !== 'string' || !STORE_ID.test(id))
  ) {
    throw new ApiError(
      400,
      'invalid_store_id',
      'lost: give a non-empty list of store ids (32 hex digits each), as GET /api/v1/store shows them in nodes_lost',
    );
  }
  return lost as string[];
}

export function storeRoutes(router: ApiRouter, deps: RouteDeps): void {
  const auth = requireKey(deps);
  const admin = requireAdmin('the store is shared by every tenant');

  router.get(STORE_PATH, auth, admin, async (ctx) => {
    const [identity, nodes] = await Promise.all([deps.store.storeIdentity(), deps.store.nodeStatuses()]);
    ctx.body = {
      data: {
        id: identity?.id ?? null,
        created_at: identity ? new Date(identity.createdAt).toISOString() : null,
        replaces: identity?.replaces ?? [],
        nodes_lost: lostNodes(nodes),
      },
    };
  });

  router.post(STORE_ACCEPT_PATH, auth, admin, async (ctx) => {
    // No body (or {}): every lost id the nodes report now.
    const empty = ctx.request.type === '' && !(Number(ctx.request.length ?? 0) > 0);
    const body = empty ? undefined : await readJson(ctx, deps.config.bodyLimitBytes);
    const named = parseAcceptBody(body);
    const current = await deps.store.storeIdentity();
    const reported = lostNodes(await deps.store.nodeStatuses())
      .map((n) => n.lost_id)
      .filter((id) => id !== current?.id);
    const lost = [...new Set(named ?? reported)];
    if (lost.length === 0) {
      throw new ApiError(
        409,
        'nothing_to_accept',
        'no node reports a lost store (GET /api/v1/store, nodes_lost): there is nothing to accept; ' +
          'a node that is down now reports it when it starts, or name its id: {"lost": ["<store id>"]}',
      );
    }
    const identity = await deps.store.ensureStoreIdentity(lost);
    ctx.body = {
      data: {
        id: identity.id,
        created_at: new Date(identity.createdAt).toISOString(),
        replaces: identity.replaces,
        accepted: lost,
      },
    };
  });
}
