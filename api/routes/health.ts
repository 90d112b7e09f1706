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

  router.get('/readyz', async (ctx) => {
    if (await deps.store.ping()) {
      ctx.body = { status: 'ready' };
    } else {
      ctx.status = 503;
      ctx.body = {
        error: { code: 'store_unavailable', message: 'Redis does not answer PING; retry shortly' },
      };
    }
  });

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
