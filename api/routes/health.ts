/**
 * Operational endpoints: /healthz, /readyz and /api/v1/openapi.json need no
 * key; /metrics needs the admin key (its labels name every tenant's computers).
 */
import type { ApiMetrics } from '../metrics.js';
import { openApiDocument } from '../openapi.js';
import { type ApiRouter, type RouteDeps, requireAdmin, requireKey } from './deps.js';

export function healthRoutes(
  router: ApiRouter,
  deps: RouteDeps,
  metrics: ApiMetrics,
  moreMetrics?: () => Promise<string>,
): void {
  router.get('/healthz', (ctx) => {
    ctx.body = { status: 'ok' };
  });

  // Ready when Redis answers; with it, how many nodes run each kernel-dependent feature in each
  // state (counts only: which node runs which kernel is for the admin, GET /api/v1/nodes).
  router.get('/readyz', async (ctx) => {
    if (await deps.store.ping()) {
      const nodes = await deps.store.nodeStatuses().catch(() => []);
      const features: Record<string, Record<string, number>> = {};
      for (const n of nodes) {
        for (const [name, f] of Object.entries(n.features)) {
          features[name] ??= {};
          features[name][f.state] = (features[name][f.state] ?? 0) + 1;
        }
      }
      // Nodes whose agent lost its store keep enforcing and follow nothing: an operator must act.
      const storeLost = nodes.filter((n) => n.store?.state === 'lost').length;
      ctx.body = { status: 'ready', nodes: nodes.length, features, store_lost: storeLost };
    } else {
      ctx.status = 503;
      ctx.body = {
        error: { code: 'store_unavailable', message: 'Redis does not answer PING; retry shortly' },
      };
    }
  });

  router.get(
    '/api/v1/nodes',
    requireKey(deps),
    requireAdmin('nodes are shared by every tenant'),
    async (ctx) => {
      const nodes = await deps.store.nodeStatuses();
      ctx.body = {
        data: nodes.map((n) => ({
          node: n.node,
          kernel: n.kernel,
          version: n.version,
          started_at: new Date(n.startedAt).toISOString(),
          seen_at: new Date(n.seenAt).toISOString(),
          features: n.features,
          store: n.store
            ? {
                state: n.store.state,
                id: n.store.id,
                ...(n.store.state === 'lost'
                  ? {
                      found: n.store.found || null,
                      since: new Date(n.store.since ?? n.seenAt).toISOString(),
                    }
                  : {}),
              }
            : null,
        })),
      };
    },
  );

  router.get(
    '/metrics',
    requireKey(deps),
    requireAdmin("the metrics name every tenant's computers"),
    async (ctx) => {
      ctx.type = metrics.registry.contentType;
      const [own, more] = await Promise.all([metrics.registry.metrics(), moreMetrics?.() ?? '']);
      ctx.body = more === '' ? own : `${own.endsWith('\n') ? own : `${own}\n`}${more}`;
    },
  );

  const doc = openApiDocument({ ui: deps.config.ui === 'on' });
  router.get('/api/v1/openapi.json', (ctx) => {
    ctx.body = doc;
  });
}
