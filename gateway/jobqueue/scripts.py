"""Lua scripts of the job store: every state transition is one atomic script.

Key layout (`{id}` is a hash tag; the scripts also touch global sets, so this assumes one Redis, not a
cluster): `tritonstack:job:{id}` record hash, `…:input` the job's input, `…:results` unit index → JSONL
bytes, `…:lease` the running worker's token; `<queue name>:queued` / `…:running` zsets of that queue's active jobs;
`tritonstack:jobs:owner:<identity>` zset of a key's active jobs scored by their input items.
"""

from __future__ import annotations

# KEYS: record, input, owner, queued, arq job, arq queue, idempotency key
# ARGV: id, items, max_active, max_pending_items, now_ms, arq job bytes, arq expiry ms, input bytes,
#       digest ('' = no idempotency key), idempotency ttl s, record key prefix, field, value, ...
SUBMIT = """
if ARGV[9] ~= '' then
  local existing = redis.call('GET', KEYS[7])
  if existing then
    local sep = string.find(existing, '|', 1, true)
    local jid = string.sub(existing, 1, sep - 1)
    if string.sub(existing, sep + 1) == ARGV[9] then return {'replay', jid} end
    return {'conflict', jid}
  end
end
local active = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
local count, pending = 0, 0
for i = 1, #active, 2 do
  if redis.call('EXISTS', ARGV[11] .. '{' .. active[i] .. '}') == 1 then
    count = count + 1
    pending = pending + tonumber(active[i + 1])
  else
    redis.call('ZREM', KEYS[3], active[i])
  end
end
if count >= tonumber(ARGV[3]) then return {'too_many_jobs', tostring(count)} end
if pending + tonumber(ARGV[2]) > tonumber(ARGV[4]) then return {'too_many_items', tostring(pending)} end
local fields = {}
for i = 12, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('SET', KEYS[2], ARGV[8])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
redis.call('PSETEX', KEYS[5], ARGV[7], ARGV[6])
redis.call('ZADD', KEYS[6], ARGV[5], ARGV[1])
if ARGV[9] ~= '' then redis.call('SET', KEYS[7], ARGV[1] .. '|' .. ARGV[9], 'EX', ARGV[10]) end
return {'created', ARGV[1]}
"""

# KEYS: record, queued, running, lease   ARGV: id, now_ms, token, lease_ms
# → {status, first}: 'running' when this worker may run it (first = 1 on its first start)
START = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {'missing', 0} end
if st ~= 'queued' and st ~= 'running' then return {st, 0} end
local holder = redis.call('GET', KEYS[4])
if holder and holder ~= ARGV[3] then return {'leased', 0} end
redis.call('SET', KEYS[4], ARGV[3], 'PX', ARGV[4])
local first = 0
if st == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started_ms', ARGV[2])
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
  first = 1
end
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
return {'running', first}
"""

# KEYS: results, record   ARGV: unit index, JSONL bytes, items, failed items, tokens  → 1 new, 0 already there
COMMIT = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], 'done', ARGV[3])
if ARGV[4] ~= '0' then redis.call('HINCRBY', KEYS[2], 'failed', ARGV[4]) end
if ARGV[5] ~= '0' then redis.call('HINCRBY', KEYS[2], 'tokens', ARGV[5]) end
return 1
"""

# KEYS: record, input, results, lease, queued, running, owner   ARGV: id, status, now_ms, error json
# → {final status, 1 when a webhook is due}; a cancel requested meanwhile wins over success
FINISH = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {'missing', 0} end
if st == 'succeeded' or st == 'failed' then return {st, 0} end
if st == 'cancelled' and redis.call('HEXISTS', KEYS[1], 'finished_ms') == 1 then return {st, 0} end
local final = ARGV[2]
if st == 'cancelled' then final = 'cancelled' end
redis.call('HSET', KEYS[1], 'status', final, 'finished_ms', ARGV[3])
if ARGV[4] ~= '' and final == 'failed' then redis.call('HSET', KEYS[1], 'error', ARGV[4]) end
local hook = 0
if redis.call('HEXISTS', KEYS[1], 'webhook_url') == 1 then
  redis.call('HSET', KEYS[1], 'webhook_status', 'pending')
  hook = 1
end
local ttl = tonumber(redis.call('HGET', KEYS[1], 'result_ttl_s') or '86400')
redis.call('DEL', KEYS[2], KEYS[4])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
redis.call('ZREM', KEYS[7], ARGV[1])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[3], ttl)
return {final, hook}
"""

# KEYS: record, input, results, queued, owner, arq job, arq queue   ARGV: id, now_ms
# → 'cancelled' (was queued: removed from the queue), 'cancelling' (running: stops between batches), or the
#   terminal status it already had, or 'missing'
CANCEL = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
if st == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'cancel_ms', ARGV[2], 'finished_ms', ARGV[2])
  redis.call('DEL', KEYS[2], KEYS[6])
  redis.call('ZREM', KEYS[4], ARGV[1])
  redis.call('ZREM', KEYS[5], ARGV[1])
  redis.call('ZREM', KEYS[7], ARGV[1])
  local ttl = tonumber(redis.call('HGET', KEYS[1], 'result_ttl_s') or '86400')
  redis.call('EXPIRE', KEYS[1], ttl)
  return 'cancelled'
end
if st == 'running' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'cancel_ms', ARGV[2])
  return 'cancelling'
end
return st
"""

# KEYS: lease   ARGV: token, lease_ms  → 1 renewed, 0 lost
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# KEYS: lease   ARGV: token
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: record   ARGV: plan json → the plan in force (the first one stored wins: retries reuse it)
SET_PLAN = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('HSETNX', KEYS[1], 'plan', ARGV[1])
return redis.call('HGET', KEYS[1], 'plan')
"""

# KEYS: record   ARGV: field, value, ...  (never recreates an expired record)
UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""
