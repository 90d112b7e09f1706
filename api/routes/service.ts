/**
 * GET /api/v1/service: what a client needs to know of this service to
 * register computers the way it expects, for the calling key: the default
 * node (where `egressd run --create` registers its computer), and where the
 * key's computers may live (the sandbox roots, or a tenant key's prefix).
 */

import type { ServiceView } from '../views.js';
import { type ApiRouter, type RouteDeps, requireKey } from './deps.js';
import { keyPrefix } from './keys.js';

export const SERVICE_PATH = '/api/v1/service';

export function serviceRoutes(router: ApiRouter, deps: RouteDeps): void {
  router.get(SERVICE_PATH, requireKey(deps), (ctx) => {
    const principal = ctx.state.principal;
    const data: ServiceView = {
      default_node: deps.config.defaultNode || null,
      cgroup_bases:
        principal.kind === 'admin'
          ? [...deps.config.cgroupRoots]
          : [principal.cgroupPrefix || keyPrefix(deps.config.cgroupRoots, principal.tenant)],
      tenant: principal.kind === 'admin' ? null : principal.tenant,
    };
    ctx.body = { data };
  });
}
