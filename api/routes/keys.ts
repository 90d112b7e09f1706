/** Tenant API keys, admin only: POST /api/v1/keys (the key is shown once), GET, DELETE /api/v1/keys/{id}. */
import { generateApiKey } from '../auth.js';
import { readJson } from '../body.js';
import { ApiError } from '../errors.js';
import { checkUnderRoots, parseKeyBody } from '../validation.js';
import { apiKeyView } from '../views.js';
import { type ApiRouter, type RouteDeps, requireAdmin, requireKey } from './deps.js';

export const KEYS_PATH = '/api/v1/keys';
export const KEY_PATH = '/api/v1/keys/:keyId';

export function keyRoutes(router: ApiRouter, deps: RouteDeps): void {
  const auth = requireKey(deps);
  const admin = requireAdmin('tenant keys cannot manage keys');

  router.post(KEYS_PATH, auth, admin, async (ctx) => {
    const body = parseKeyBody(await readJson(ctx, deps.config.bodyLimitBytes));
    const { id, key, hash } = generateApiKey();
    const cgroupPrefix = body.cgroup_prefix ?? keyPrefix(deps.config.cgroupRoots, body.tenant);
    checkUnderRoots(cgroupPrefix, deps.config.cgroupRoots, 'cgroup_prefix');
    const record = {
      id,
      hash,
      tenant: body.tenant,
      cgroupPrefix,
      name: body.name ?? null,
      createdAt: new Date().toISOString(),
    };
    await deps.store.putApiKey(record);
    ctx.status = 201;
    ctx.body = { data: { ...apiKeyView(record), key } };
  });

  router.get(KEYS_PATH, auth, admin, async (ctx) => {
    ctx.body = { data: (await deps.store.listApiKeys()).map(apiKeyView) };
  });

  router.delete(KEY_PATH, auth, admin, async (ctx) => {
    const keyId = ctx.params['keyId'] ?? '';
    if (!/^[0-9a-f]{16}$/.test(keyId) || !(await deps.store.deleteApiKey(keyId))) {
      throw new ApiError(
        404,
        'key_not_found',
        'key not found: give the id returned when the key was created',
      );
    }
    ctx.status = 204;
  });
}

/** The default cgroup prefix of a tenant's key: `<first root>/<tenant>`. */
export function keyPrefix(roots: readonly string[], tenant: string): string {
  const root = roots[0] ?? '';
  return root === '' ? tenant : `${root}/${tenant}`;
}
