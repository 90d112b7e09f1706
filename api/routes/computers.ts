/** The computers registry: PUT, GET, DELETE /api/v1/computers/{id}, GET /api/v1/computers. */

import { checkComputerId } from '../../policy/schema.js';
import { tenantNamespace } from '../../policy/types.js';
import { scopeOf } from '../auth.js';
import { readJson } from '../body.js';
import { ApiError, computerNotFound } from '../errors.js';
import {
  checkNode,
  checkRelative,
  checkUnderRoots,
  isBelow,
  parseComputer,
  queryInt,
} from '../validation.js';
import { computerListItemView, computerView } from '../views.js';
import { type ApiRouter, type RouteDeps, requireKey } from './deps.js';
import { keyPrefix } from './keys.js';

export const COMPUTER_PATH = '/api/v1/computers/:id';
export const COMPUTERS_PATH = '/api/v1/computers';

export function computerRoutes(router: ApiRouter, deps: RouteDeps): void {
  const auth = requireKey(deps);

  router.get(COMPUTERS_PATH, auth, async (ctx) => {
    const limit = queryInt(ctx.query['limit'], 'limit', 1, 1000) ?? 100;
    const node = typeof ctx.query['node'] === 'string' ? checkNode(ctx.query['node'], 'node') : undefined;
    if (ctx.query['node'] !== undefined && node === undefined) {
      throw new ApiError(400, 'invalid_request', 'node: give it once');
    }
    const cursorParam = ctx.query['cursor'];
    if (cursorParam !== undefined && typeof cursorParam !== 'string') {
      throw new ApiError(400, 'invalid_request', 'cursor: give it once, as returned in next_cursor');
    }
    const cursor = cursorParam === undefined ? undefined : checkCursor(cursorParam);
    const include = checkInclude(ctx.query['include']);
    const page = await deps.store.listComputers({
      scope: scopeOf(ctx.state.principal),
      limit,
      ...(node === undefined ? {} : { node }),
      ...(cursor === undefined ? {} : { cursor }),
    });
    const ids = page.computers.map((c) => c.id);
    // Counted only for the page, which listComputers already scoped to the key's tenant.
    const [statuses, denials] = await Promise.all([
      deps.store.policyStatuses(ids),
      include.has('denials_1m') ? deps.store.recentEventCounts(ids, Date.now() - 60_000) : undefined,
    ]);
    ctx.body = {
      data: page.computers.map((c) =>
        computerListItemView(
          c,
          statuses.get(c.id) ?? {
            mode: 'unrestricted',
            dns: 'all',
            audit: false,
            version: 0,
            enforced: undefined,
          },
          denials?.get(c.id),
        ),
      ),
      next_cursor: page.nextCursor,
    };
  });

  router.get(COMPUTER_PATH, auth, async (ctx) => {
    const id = checkComputerId(ctx.params['id'] ?? '');
    const computer = await deps.store.getComputer(id, scopeOf(ctx.state.principal));
    if (!computer) throw computerNotFound();
    ctx.body = { data: computerView(computer) };
  });

  router.put(COMPUTER_PATH, auth, async (ctx) => {
    const id = checkComputerId(ctx.params['id'] ?? '');
    const raw = await readJson(ctx, deps.config.bodyLimitBytes);
    const body = parseComputer(raw);
    const rawCgroup = (raw as { cgroup?: unknown }).cgroup;
    const principal = ctx.state.principal;
    let tenant = body.tenant;
    if (principal.kind === 'tenant') {
      if (tenant !== undefined && tenant !== principal.tenant) {
        throw new ApiError(
          400,
          'invalid_request',
          `tenant: a tenant key registers computers of its own tenant only; leave tenant out or send "${principal.tenant}"`,
        );
      }
      tenant = principal.tenant;
      // Ids are scoped per tenant: a tenant key registers ids in its own namespace only, so what
      // it is told about an id outside it never depends on whether another tenant has that id.
      // (Its own computers registered before namespaces keep their ids.)
      const namespace = tenantNamespace(principal.tenant);
      if (!id.startsWith(namespace) && !(await deps.store.getComputer(id, principal.tenant))) {
        throw new ApiError(
          400,
          'id_outside_namespace',
          `id: a tenant key registers computer ids that begin with "${namespace}", for example "${namespace}sandbox-1"`,
        );
      }
      // A key made before prefixes governs the default prefix of its tenant.
      const prefix = principal.cgroupPrefix || keyPrefix(deps.config.cgroupRoots, principal.tenant);
      checkRelative(rawCgroup, body.cgroup, [prefix], 'cgroup');
      if (!isBelow(body.cgroup, prefix)) {
        throw new ApiError(
          403,
          'cgroup_outside_prefix',
          `cgroup: "${body.cgroup}" is not below "${prefix}", the cgroup prefix of this key; register computers below it, for example "${prefix}/sandbox-1"`,
        );
      }
    } else {
      checkRelative(rawCgroup, body.cgroup, deps.config.cgroupRoots, 'cgroup');
      checkUnderRoots(body.cgroup, deps.config.cgroupRoots, 'cgroup');
      // An id in a tenant's namespace belongs to that tenant.
      const owner = id.includes('~') ? id.slice(0, id.indexOf('~')) : undefined;
      if (owner !== undefined) {
        if (tenant !== undefined && tenant !== owner) {
          throw new ApiError(
            400,
            'invalid_request',
            `tenant: "${id}" is in the id namespace of tenant "${owner}"; leave tenant out or send "${owner}"`,
          );
        }
        tenant = owner;
      }
    }
    const result = await deps.store.putComputer(
      id,
      { cgroup: body.cgroup, node: body.node, tenant, dnsUpstream: body.dns_upstream },
      { scope: scopeOf(principal), defaultNode: deps.config.defaultNode },
    );
    switch (result.status) {
      case 'not_found':
        throw computerNotFound();
      case 'node_required':
        throw new ApiError(
          400,
          'node_required',
          'node required: this service has no default node (EGRESSD_DEFAULT_NODE); send "node" with the computer',
        );
      case 'cgroup_nested':
        throw new ApiError(
          409,
          'cgroup_nested',
          `cgroup: "${body.cgroup}" is an ancestor or a descendant of another computer's cgroup on this node` +
            (principal.kind === 'admin' ? ` (${result.owner})` : '') +
            '; computers may not nest: choose a sibling path',
        );
      case 'cgroup_in_use':
        throw new ApiError(
          409,
          'cgroup_in_use',
          `cgroup: "${body.cgroup}" already belongs to another computer on this node` +
            (principal.kind === 'admin' ? ` (${result.owner}); delete that one first` : ''),
        );
      default:
        ctx.status = result.status === 'created' ? 201 : 200;
        if (result.status === 'created') ctx.set('Location', `/api/v1/computers/${id}`);
        ctx.body = { data: computerView(result.computer) };
    }
  });

  router.delete(COMPUTER_PATH, auth, async (ctx) => {
    const id = checkComputerId(ctx.params['id'] ?? '');
    if (!(await deps.store.deleteComputer(id, scopeOf(ctx.state.principal)))) throw computerNotFound();
    ctx.status = 204;
  });
}

function checkCursor(cursor: string): string {
  try {
    return checkComputerId(cursor);
  } catch {
    throw new ApiError(400, 'invalid_request', 'cursor: must be a next_cursor value from an earlier page');
  }
}

/** The fields that ?include= may add to a list item. */
const INCLUDES = ['denials_1m'] as const;
type Include = (typeof INCLUDES)[number];

function checkInclude(value: unknown): ReadonlySet<Include> {
  if (value === undefined) return new Set();
  const names = typeof value === 'string' ? value.split(',') : [];
  const wrong = names.find((n) => !(INCLUDES as readonly string[]).includes(n));
  if (typeof value !== 'string' || wrong !== undefined) {
    throw new ApiError(
      400,
      'invalid_request',
      `include: give it once, as a comma-separated list of ${INCLUDES.join(', ')}` +
        (wrong === undefined ? '' : ` ("${wrong}" is none of them)`),
    );
  }
  return new Set(names as Include[]);
}
