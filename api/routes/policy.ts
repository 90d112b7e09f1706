/** GET, PUT, DELETE /api/v1/computers/{id}/network-policy: the seed's endpoints. */
import type { Context } from 'koa';
import { checkComputerId, parsePolicy } from '../../policy/schema.js';
import type { Policy } from '../../policy/types.js';
import { UNRESTRICTED } from '../../policy/types.js';
import type { PolicyRecord } from '../../store/store.js';
import { scopeOf } from '../auth.js';
import { readJson } from '../body.js';
import { ApiError, computerNotFound } from '../errors.js';
import { suggestPolicy, WILDCARD_THRESHOLD } from '../suggestion.js';
import { queryInt, queryTime } from '../validation.js';
import { enforcementState, isEnforced, policyReplyJson, suggestionView } from '../views.js';
import { type ApiRouter, type ApiState, type RouteDeps, requireKey } from './deps.js';

export const POLICY_PATH = '/api/v1/computers/:id/network-policy';

export function policyRoutes(router: ApiRouter, deps: RouteDeps): void {
  const auth = requireKey(deps);

  router.get(POLICY_PATH, auth, async (ctx) => {
    const id = checkComputerId(ctx.params['id'] ?? '');
    const record = await deps.store.getPolicy(id, scopeOf(ctx.state.principal));
    if (!record) throw computerNotFound();
    ctx.set('ETag', `"${record.version}"`);
    ctx.type = 'application/json';
    ctx.body = policyReplyJson(record);
  });

  router.put(POLICY_PATH, auth, async (ctx) => {
    const id = checkComputerId(ctx.params['id'] ?? '');
    const policy = parsePolicy(await readJson(ctx, deps.config.bodyLimitBytes), deps.config.maxRules);
    await change(ctx, deps, id, policy);
  });

  // What the computer's DNS lookups taught it: hostname → address, until when.
  router.get(`${POLICY_PATH}/learned`, auth, async (ctx) => {
    const id = checkComputerId(ctx.params['id'] ?? '');
    const learned = await deps.store.getLearned(id, scopeOf(ctx.state.principal));
    if (!learned) throw computerNotFound();
    ctx.body = {
      data: learned.map((e) => ({
        name: e.name,
        address: e.address,
        expires_at: new Date(e.expiresAt).toISOString(),
      })),
    };
  });

  // The computer's deny events, newest first (?limit=1..1000, default 100; ?since=RFC 3339 time).
  router.get(`${POLICY_PATH}/events`, auth, async (ctx) => {
    const id = checkComputerId(ctx.params['id'] ?? '');
    const limit = queryInt(ctx.query['limit'], 'limit', 1, 1000) ?? 100;
    const since = queryTime(ctx.query['since'], 'since') ?? 0;
    const events = await deps.store.getEvents(id, scopeOf(ctx.state.principal), limit, since);
    if (!events) throw computerNotFound();
    ctx.body = { data: events };
  });

  // The suggested allowlist: what the computer was seen connecting to (?since=RFC 3339 time) as a
  // policy body to PUT back, with the observations behind each rule (api/suggestion.ts).
  router.get(`${POLICY_PATH}/suggestion`, auth, async (ctx) => {
    const id = checkComputerId(ctx.params['id'] ?? '');
    const since = queryTime(ctx.query['since'], 'since');
    const observations = await deps.store.getObservations(id, scopeOf(ctx.state.principal), since ?? 0);
    if (!observations) throw computerNotFound();
    const suggestion = suggestPolicy(observations, { maxRules: deps.config.maxRules });
    ctx.body = {
      data: suggestionView(suggestion, {
        wildcardThreshold: WILDCARD_THRESHOLD,
        since,
        observed: observations.length,
      }),
    };
  });

  // The same events live, as Server-Sent Events (one `data:` line of JSON each), from now on:
  // one subscriber of the process's EventFeed, within the limits of EventStreams (429 / 503).
  router.get(`${POLICY_PATH}/events/stream`, auth, async (ctx) => {
    const id = checkComputerId(ctx.params['id'] ?? '');
    const principal = ctx.state.principal;
    const stream = deps.streams.open(principal, ctx.res, ctx.state.session);
    try {
      if (!(await deps.store.getComputer(id, scopeOf(principal)))) throw computerNotFound();
      stream.whenEnded(await deps.store.eventFeed().subscribe(id, stream));
    } catch (err) {
      stream.cancel();
      throw err;
    }
    // Revoked, or Redis lost, while it was being opened: answer that; a client that left gets nothing.
    const failure = stream.failure();
    if (failure) throw failure;
    ctx.status = 200;
    ctx.respond = false;
    if (stream.ended) return;
    ctx.req.socket.setTimeout(0);
    stream.start();
    if (ctx.method === 'HEAD') ctx.res.end();
  });

  router.delete(POLICY_PATH, auth, async (ctx) => {
    const id = checkComputerId(ctx.params['id'] ?? '');
    await change(ctx, deps, id, UNRESTRICTED);
  });
}

/** Stores the policy, waits for the agent (bounded), answers 200 (enforced) or 202 (pending). */
async function change(
  ctx: Context & { state: ApiState },
  deps: RouteDeps,
  id: string,
  policy: Policy,
): Promise<void> {
  const waitMs = queryInt(ctx.query['wait'], 'wait', 0, deps.config.maxWaitMs) ?? deps.config.waitTimeoutMs;
  const ifMatch = parseIfMatch(ctx.get('If-Match'));
  const result = await deps.store.putPolicy(id, policy, {
    scope: scopeOf(ctx.state.principal),
    ...(ifMatch === undefined ? {} : { ifMatch }),
  });
  if (result.status === 'not_found') throw computerNotFound();
  if (result.status === 'precondition_failed') {
    throw new ApiError(
      412,
      'precondition_failed',
      `If-Match: the policy is at version ${result.version}, not ${ifMatch}; GET it again and retry`,
    );
  }
  const record: PolicyRecord = result.record;
  const started = process.hrtime.bigint();
  // Wait only while the agent has not reported on this version: a missing or forbidden cgroup is
  // answered at once (202, with the reason), not after the whole wait.
  if (enforcementState(record) === 'pending' && waitMs > 0) {
    record.enforced = (await deps.store.waitEnforced(id, record.version, waitMs)) ?? record.enforced;
  }
  const state = isEnforced(record) ? 'enforced' : 'pending';
  deps.metrics.policyChanges.inc({ result: enforcementState(record) });
  deps.metrics.enforcementWait.observe({ result: state }, Number(process.hrtime.bigint() - started) / 1e9);
  ctx.status = state === 'enforced' ? 200 : 202;
  ctx.set('ETag', `"${record.version}"`);
  ctx.type = 'application/json';
  ctx.body = policyReplyJson(record);
}

/** `If-Match: "7"` (or 7, or W/"7") → 7; '*' or absent → undefined. */
export function parseIfMatch(header: string): number | undefined {
  const value = header.trim();
  if (value === '' || value === '*') return undefined;
  const m = /^(?:W\/)?"?(\d{1,15})"?$/.exec(value);
  if (!m) {
    throw new ApiError(
      400,
      'invalid_request',
      'If-Match: must be the policy version, as given in the ETag header or the "version" field (for example "7")',
    );
  }
  return Number(m[1]);
}
