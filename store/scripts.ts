/**
 * Lua scripts: each change to the store is one of these, so the policy, its
 * new version and the change record on the node's stream are written in one
 * atomic step (an agent never sees a version without its record). Each is a
 * command of the store's connection (`defineScripts`).
 *
 * Key names come in as KEYS or, where they depend on a value the script
 * reads (the computer's node), as `%s` templates from keys.ts in ARGV.
 * Replies are flat arrays whose first element is a status word.
 */
import type { Redis } from 'ioredis';

/**
 * Lua prelude of every script that records a change: appends the record to a
 * node's stream with a per-node sequence number (`seq`, from the counter
 * `<stream>:seq`), so an agent can tell when records were trimmed away
 * before it read them (a gap in seq) and resync.
 */
const APPEND_CHANGE = `
local function appendChange(stream, maxlen, id, kind, v, cgroup, at)
  local seq = redis.call('INCR', stream .. ':seq')
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*',
    'computer_id', id, 'kind', kind, 'version', v, 'cgroup', cgroup, 'at', at, 'seq', seq)
end
`;

/**
 * Lua prelude of the scripts that place a computer's cgroup: the node's
 * path index (a sorted set beside the path → id hash, built from the hash
 * the first time: stores written before it existed), and the nesting check.
 */
const CGROUP_PATHS = `
local function pathIndex(hashKey, setKey)
  if redis.call('EXISTS', setKey) == 0 then
    for _, p in ipairs(redis.call('HKEYS', hashKey)) do redis.call('ZADD', setKey, 0, p) end
  end
end
-- The id of another computer whose cgroup is an ancestor or a descendant of cgroup, or nil.
local function nestedOwner(hashKey, setKey, cgroup, id)
  for i = 1, #cgroup do
    if string.sub(cgroup, i, i) == '/' then
      local owner = redis.call('HGET', hashKey, string.sub(cgroup, 1, i - 1))
      if owner and owner ~= id then return owner end
    end
  end
  for _, p in ipairs(redis.call('ZRANGEBYLEX', setKey, '[' .. cgroup .. '/', '(' .. cgroup .. '0', 'LIMIT', 0, 2)) do
    local owner = redis.call('HGET', hashKey, p)
    if owner and owner ~= id then return owner end
  end
  return nil
end
`;

/**
 * KEYS: computer, policy, enforced. ARGV: tenant scope ('' = any).
 * Reply: 'ok', mode, rules, version, updated_at, the acknowledgement's
 * version, at, state, reason, then dns ('' when stored before dns existed),
 * revocation, audit ('1', else '0': also when stored before audit existed).
 */
const GET_POLICY = `
local c = redis.call('HMGET', KEYS[1], 'tenant', 'node')
if not c[1] or (ARGV[1] ~= '' and c[1] ~= ARGV[1]) then return {'not_found'} end
local p = redis.call('HMGET', KEYS[2], 'mode', 'rules', 'version', 'updated_at', 'dns', 'audit')
local e = redis.call('HMGET', KEYS[3], 'version', 'at', 'state', 'reason', 'revocation')
return {'ok', p[1] or 'unrestricted', p[2] or '[]', p[3] or '0', p[4] or '', e[1] or '', e[2] or '', e[3] or '', e[4] or '', p[5] or '', e[5] or '', p[6] or '0'}
`;

/**
 * KEYS: computer, policy, enforced, version counter.
 * ARGV: tenant scope, id, mode, rules JSON, if-match version ('' = none),
 *       now, node changes template, stream maxlen, dns, audit ('1'/'0').
 * A policy stored before `dns` existed (no such field) differs from every
 * new one: the first PUT after the upgrade writes a new version. One stored
 * before `audit` existed (no such field) is audit '0': the same policy.
 * An unchanged policy is not rewritten: its version stays. That comes
 * before the If-Match check, so a repeated conditional PUT whose first try
 * took effect (its answer was lost) answers as unchanged rather than 412
 * (RFC 9110 13.1.1 allows a 2xx when the requested change is already made).
 * The stored policy PUT again while its agent reports `version_regressed`
 * for its version is written anew under a new version (see RAISE_VERSION).
 */
const PUT_POLICY = `${APPEND_CHANGE}
local c = redis.call('HMGET', KEYS[1], 'tenant', 'node', 'cgroup')
if not c[1] or (ARGV[1] ~= '' and c[1] ~= ARGV[1]) then return {'not_found'} end
local cur = redis.call('HMGET', KEYS[2], 'mode', 'rules', 'version', 'updated_at', 'dns', 'audit')
local curVersion = cur[3] or '0'
local e = redis.call('HMGET', KEYS[3], 'version', 'at', 'state', 'reason', 'revocation')
-- The same policy again after its agent refused this version as older than the one it enforces
-- (version_regressed): a new version, so that the operator can take the stored policy back.
local refused = e[3] == 'version_regressed' and e[1] == curVersion
if not refused and cur[1] == ARGV[3] and cur[2] == ARGV[4] and cur[5] == ARGV[9] and (cur[6] or '0') == ARGV[10] then
  return {'unchanged', curVersion, cur[4] or '', e[1] or '', e[2] or '', e[3] or '', e[4] or '', e[5] or ''}
end
if ARGV[5] ~= '' and ARGV[5] ~= curVersion then return {'precondition_failed', curVersion} end
local v = redis.call('INCR', KEYS[4])
redis.call('HSET', KEYS[2], 'mode', ARGV[3], 'rules', ARGV[4], 'dns', ARGV[9], 'audit', ARGV[10], 'version', v, 'updated_at', ARGV[6])
appendChange(string.format(ARGV[7], c[2]), ARGV[8], ARGV[2], 'policy', v, c[3], ARGV[6])
return {'ok', tostring(v), ARGV[6], e[1] or '', e[2] or '', e[3] or '', e[4] or '', e[5] or ''}
`;

/**
 * KEYS: computer, policy, enforced, version counter, all computers, events, learned, observed.
 * ARGV: tenant scope, id, cgroup, node ('' = keep, or default), default node,
 *       tenant, tenant given ('1'/'0'), now, templates (node computers,
 *       node cgroups, node changes, tenant computers), stream maxlen,
 *       template (node cgroup paths), dns upstream ('' = none), dns upstream
 *       given ('1'/'0': absent keeps the current one).
 * A change of the dns upstream alone is no new version: it appends a
 * 'computer' record with the policy's current version, so that the agent
 * re-reads the computer (and gives its DNS proxy port the new upstream).
 * A computer's cgroup is neither an ancestor nor a descendant of another
 * computer's on the node ('cgroup_nested'): one policy per process.
 * A new computer starts without an acknowledgement, deny events, learned
 * names or observations: whatever a computer of the same id left behind (written by an older
 * build, which did not delete them) is not its.
 */
const PUT_COMPUTER = `${APPEND_CHANGE}${CGROUP_PATHS}
local scope, id, cgroup, node, defaultNode = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local tenant, tenantGiven, now = ARGV[6], ARGV[7] == '1', ARGV[8]
local tNodeComputers, tNodeCgroups, tNodeChanges, tTenantComputers = ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local maxlen, tNodeCgroupPaths = ARGV[13], ARGV[14]
local dnsUpstream, dnsUpstreamGiven = ARGV[15], ARGV[16] == '1'
local old = redis.call('HMGET', KEYS[1], 'tenant', 'node', 'cgroup', 'created_at', 'dns_upstream')
local exists = old[1] and true or false
if exists and scope ~= '' and old[1] ~= scope then return {'not_found'} end
if node == '' then
  if exists then node = old[2] else node = defaultNode end
end
if node == '' then return {'node_required'} end
if not tenantGiven then
  if exists then tenant = old[1] else tenant = '' end
end
local owner = redis.call('HGET', string.format(tNodeCgroups, node), cgroup)
if owner and owner ~= id then return {'cgroup_in_use', owner} end
pathIndex(string.format(tNodeCgroups, node), string.format(tNodeCgroupPaths, node))
local nested = nestedOwner(string.format(tNodeCgroups, node), string.format(tNodeCgroupPaths, node), cgroup, id)
if nested then return {'cgroup_nested', nested} end
if not dnsUpstreamGiven then dnsUpstream = old[5] or '' end
local placed = (not exists) or old[2] ~= node or old[3] ~= cgroup
local upstreamChanged = exists and (old[5] or '') ~= dnsUpstream
if exists and not placed and old[1] == tenant and not upstreamChanged then
  return {'unchanged', old[3], old[2], old[1], old[4], redis.call('HGET', KEYS[1], 'updated_at') or old[4], dnsUpstream}
end
local v = nil
if placed then v = redis.call('INCR', KEYS[4]) end
if exists then
  if old[2] ~= node or old[3] ~= cgroup then
    if redis.call('HGET', string.format(tNodeCgroups, old[2]), old[3]) == id then
      redis.call('HDEL', string.format(tNodeCgroups, old[2]), old[3])
      redis.call('ZREM', string.format(tNodeCgroupPaths, old[2]), old[3])
    end
  end
  if old[2] ~= node then redis.call('ZREM', string.format(tNodeComputers, old[2]), id) end
  if placed then
    -- The old node's agent detaches the old cgroup (then, on the same node, attaches the new one).
    appendChange(string.format(tNodeChanges, old[2]), maxlen, id, 'computer-deleted', v, old[3], now)
  end
  if old[1] ~= tenant and old[1] ~= '' then
    redis.call('ZREM', string.format(tTenantComputers, old[1]), id)
  end
end
local created = exists and old[4] or now
redis.call('HSET', KEYS[1], 'id', id, 'cgroup', cgroup, 'node', node, 'tenant', tenant,
  'created_at', created, 'updated_at', now)
if dnsUpstream == '' then redis.call('HDEL', KEYS[1], 'dns_upstream')
else redis.call('HSET', KEYS[1], 'dns_upstream', dnsUpstream) end
redis.call('ZADD', KEYS[5], 0, id)
redis.call('ZADD', string.format(tNodeComputers, node), 0, id)
redis.call('HSET', string.format(tNodeCgroups, node), cgroup, id)
redis.call('ZADD', string.format(tNodeCgroupPaths, node), 0, cgroup)
if tenant ~= '' then redis.call('ZADD', string.format(tTenantComputers, tenant), 0, id) end
if placed then
  if exists then
    redis.call('HSET', KEYS[2], 'version', v)
  else
    redis.call('DEL', KEYS[3], KEYS[6], KEYS[7], KEYS[8])
    redis.call('HSET', KEYS[2], 'mode', 'unrestricted', 'rules', '[]', 'dns', 'all', 'audit', '0', 'version', v, 'updated_at', now)
  end
  appendChange(string.format(tNodeChanges, node), maxlen, id, 'computer', v, cgroup, now)
elseif upstreamChanged then
  appendChange(string.format(tNodeChanges, node), maxlen, id, 'computer',
    redis.call('HGET', KEYS[2], 'version') or '0', cgroup, now)
end
return {exists and 'updated' or 'created', cgroup, node, tenant, created, now, dnsUpstream}
`;

/**
 * KEYS: computer, policy, enforced, version counter, all computers, events, learned, observed.
 * ARGV: tenant scope, id, now, templates (node computers, node cgroups,
 *       node changes, tenant computers), stream maxlen, template (node cgroup paths),
 *       computer-deleted channel.
 * Everything of the computer goes (the keys.ts entries under its id): a
 * computer registered later under the same id starts empty.
 */
const DELETE_COMPUTER = `${APPEND_CHANGE}
local scope, id, now = ARGV[1], ARGV[2], ARGV[3]
local c = redis.call('HMGET', KEYS[1], 'tenant', 'node', 'cgroup')
if not c[1] or (scope ~= '' and c[1] ~= scope) then return {'not_found'} end
local v = redis.call('INCR', KEYS[4])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[6], KEYS[7], KEYS[8])
redis.call('ZREM', KEYS[5], id)
redis.call('ZREM', string.format(ARGV[4], c[2]), id)
if redis.call('HGET', string.format(ARGV[5], c[2]), c[3]) == id then
  redis.call('HDEL', string.format(ARGV[5], c[2]), c[3])
  redis.call('ZREM', string.format(ARGV[9], c[2]), c[3])
end
if c[1] ~= '' then redis.call('ZREM', string.format(ARGV[7], c[1]), id) end
appendChange(string.format(ARGV[6], c[2]), ARGV[8], id, 'computer-deleted', v, c[3], now)
redis.call('PUBLISH', ARGV[10], id)
return {'ok', tostring(v)}
`;

/**
 * KEYS: computer, enforced. ARGV: id, version, at, node, channel, state,
 * reason ('' = none), revocation (one word, see Enforced.revocation).
 * Never moves the acknowledged version back (the state of the same version
 * may change); publishes "<id> <version> <at> <state> <revocation>[ <reason>]" (all a
 * waiting PUT answers with: it need not read the key again; the reason is
 * the rest of the message, spaces and all).
 */
const ACK_ENFORCED = `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local cur = tonumber(redis.call('HGET', KEYS[2], 'version') or '0')
if tonumber(ARGV[2]) < cur then return 0 end
local revocation = ARGV[8] or '-'
-- The same version reported again without a word (a restarted agent adopting it): what was said stays.
if revocation == '-' and tonumber(ARGV[2]) == cur then revocation = redis.call('HGET', KEYS[2], 'revocation') or '-' end
redis.call('HSET', KEYS[2], 'version', ARGV[2], 'at', ARGV[3], 'node', ARGV[4], 'state', ARGV[6], 'reason', ARGV[7] or '', 'revocation', revocation)
local message = ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. ARGV[6] .. ' ' .. revocation
if ARGV[7] and ARGV[7] ~= '' then message = message .. ' ' .. ARGV[7] end
redis.call('PUBLISH', ARGV[5], message)
return 1
`;

/**
 * KEYS: computer, events. ARGV: stream maxlen, then one event (JSON) each.
 * The agent's deny events, written only while the computer exists, so that
 * a late flush cannot bring back the stream of a deleted computer.
 */
const APPEND_EVENTS = `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 2, #ARGV do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'event', ARGV[i])
end
return #ARGV - 1
`;

/**
 * KEYS: computer, observed. ARGV: the most fields to keep, then triples of
 * field ("<host> <port> <protocol>"), count, and "<first> <last>" (ms since
 * the epoch). Written only while the computer exists (as APPEND_EVENTS):
 * counts add up, first is the earliest, last the latest; then the least
 * recently seen fields go until at most the most to keep are left.
 */
const PUT_OBSERVED = `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 2, #ARGV, 3 do
  local count = tonumber(ARGV[i + 1])
  local first, last = string.match(ARGV[i + 2], '^(%d+) (%d+)$')
  first, last = tonumber(first), tonumber(last)
  local old = redis.call('HGET', KEYS[2], ARGV[i])
  if old then
    local c, f, l = string.match(old, '^(%d+) (%d+) (%d+)$')
    count = count + tonumber(c)
    if tonumber(f) < first then first = tonumber(f) end
    if tonumber(l) > last then last = tonumber(l) end
  end
  redis.call('HSET', KEYS[2], ARGV[i], string.format('%d %d %d', count, first, last))
end
local keep = tonumber(ARGV[1])
if redis.call('HLEN', KEYS[2]) > keep then
  local all = redis.call('HGETALL', KEYS[2])
  local rows = {}
  for i = 1, #all, 2 do
    local l = tonumber(string.match(all[i + 1], ' (%d+)$')) or 0
    rows[#rows + 1] = {all[i], l}
  end
  table.sort(rows, function(a, b) return a[2] < b[2] end)
  for i = 1, #rows - keep do redis.call('HDEL', KEYS[2], rows[i][1]) end
end
return 1
`;

/**
 * KEYS: computer, learned. ARGV: now (ms since the epoch), then pairs of
 * field ("<name> <address>") and expiry (ms since the epoch).
 * Written only while the computer exists (as APPEND_EVENTS); drops expired
 * fields, and makes the key expire with its last field.
 */
const PUT_LEARNED = `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local now = tonumber(ARGV[1])
local last = 0
local current = redis.call('HGETALL', KEYS[2])
for i = 1, #current, 2 do
  local at = tonumber(current[i + 1]) or 0
  if at <= now then redis.call('HDEL', KEYS[2], current[i]) elseif at > last then last = at end
end
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  local at = tonumber(ARGV[i + 1]) or 0
  if at > last then last = at end
end
redis.call('PEXPIREAT', KEYS[2], string.format('%.0f', last))
return 1
`;

/**
 * KEYS: node computers, node changes. ARGV: computer key template, policy key template.
 * An atomic snapshot for an agent's full resync: the stream's last id and
 * seq, then for each computer its id, cgroup, tenant, mode, rules, version,
 * updated_at, dns ('' when stored before dns existed), dns_upstream ('' = none),
 * audit ('1', else '0': also when stored before audit existed).
 */
const NODE_SNAPSHOT = `
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local out = {last[1] and last[1][1] or '0-0', redis.call('GET', KEYS[2] .. ':seq') or '0'}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local c = redis.call('HMGET', string.format(ARGV[1], id), 'cgroup', 'tenant', 'dns_upstream')
  local p = redis.call('HMGET', string.format(ARGV[2], id), 'mode', 'rules', 'version', 'updated_at', 'dns', 'audit')
  if c[1] then
    table.insert(out, id)
    table.insert(out, c[1])
    table.insert(out, c[2] or '')
    table.insert(out, p[1] or 'unrestricted')
    table.insert(out, p[2] or '[]')
    table.insert(out, p[3] or '0')
    table.insert(out, p[4] or '')
    table.insert(out, p[5] or '')
    table.insert(out, c[3] or '')
    table.insert(out, p[6] or '0')
  end
end
return out
`;

/**
 * KEYS: version counter. ARGV: a version an agent enforces.
 * The counter lives in Redis like the policies, so a failover that lost
 * writes can set it back below versions already in force; an agent that
 * refuses an older version (version_regressed) raises it to at least the
 * version it keeps, so that the next PUT draws a higher one. Reply: 1 when
 * raised, 0 when it was there already.
 */
const RAISE_VERSION = `
if tonumber(redis.call('GET', KEYS[1]) or '0') >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return 1
`;

/**
 * KEYS: store identity. ARGV: a new id, created_at, then ids of lost stores
 * to record as replaced by this one (an operator's accept). Makes the
 * identity when it has no id (atomically: two makers agree on one), adds
 * the lost ids not yet there (never this store's own). Reply: id,
 * created_at, replaces.
 */
const ENSURE_IDENTITY = `
if redis.call('HEXISTS', KEYS[1], 'id') == 0 then
  redis.call('HSET', KEYS[1], 'id', ARGV[1], 'created_at', ARGV[2])
end
local id = redis.call('HGET', KEYS[1], 'id')
if #ARGV > 2 then
  local have = redis.call('HGET', KEYS[1], 'replaces') or ''
  for i = 3, #ARGV do
    if ARGV[i] ~= id and not string.find(' ' .. have .. ' ', ' ' .. ARGV[i] .. ' ', 1, true) then
      have = have == '' and ARGV[i] or (have .. ' ' .. ARGV[i])
    end
  end
  if have ~= '' then redis.call('HSET', KEYS[1], 'replaces', have) end
end
return redis.call('HMGET', KEYS[1], 'id', 'created_at', 'replaces')
`;

/** Each script with its number of KEYS (the rest of a call is ARGV). */
const SCRIPTS = {
  getPolicy: { keys: 3, lua: GET_POLICY },
  putPolicy: { keys: 4, lua: PUT_POLICY },
  putComputer: { keys: 8, lua: PUT_COMPUTER },
  deleteComputer: { keys: 8, lua: DELETE_COMPUTER },
  putObserved: { keys: 2, lua: PUT_OBSERVED },
  ackEnforced: { keys: 2, lua: ACK_ENFORCED },
  appendEvents: { keys: 2, lua: APPEND_EVENTS },
  putLearned: { keys: 2, lua: PUT_LEARNED },
  nodeSnapshot: { keys: 2, lua: NODE_SNAPSHOT },
  raiseVersion: { keys: 1, lua: RAISE_VERSION },
  ensureIdentity: { keys: 1, lua: ENSURE_IDENTITY },
} as const;

export type ScriptName = keyof typeof SCRIPTS;

/** A connection with each script as a command of its own: `redis.putPolicy(...keys, ...args)`. */
export type ScriptedRedis = Redis & Record<ScriptName, (...keysThenArgs: string[]) => Promise<unknown>>;

/**
 * Makes each script a command of `redis` (ioredis defineCommand): sent as
 * EVAL the first time on each connection, as EVALSHA after that, and once
 * more as EVAL when Redis answers NOSCRIPT (it ran nothing then).
 */
export function defineScripts(redis: Redis): ScriptedRedis {
  for (const [name, { keys, lua }] of Object.entries(SCRIPTS)) {
    redis.defineCommand(name, { numberOfKeys: keys, lua });
  }
  return redis as ScriptedRedis;
}
