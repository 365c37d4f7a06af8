"""The Lua scripts of the shared books (adbid.money.shared): every read-modify-write of
the books in Redis runs inside one of these, so `spent + leased <= budget` holds however
many processes call them at once."""

# KEYS none (single Redis or Sentinel; see docs/scaling.md for Cluster). ARGV: prefix, pid,
# ttl_ms, n, then per campaign: id, spent total, committed total, wanted lease, the
# world's budget and active flag (used only if Redis has no such campaign yet).
SYNC = """
-- Numbers go back to Redis as integers in full: Lua would write 1e14 as "1e+14", -0 as "-0".
local function int(x) return string.format('%d', x) end
local prefix, pid, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local procs = prefix .. 'procs'
local last = tonumber(redis.call('GET', prefix .. 'last') or now)
local gap = now - last
if gap > 2000 then  -- nobody synced meanwhile (Redis was away): that time does not count
  for _, p in ipairs(redis.call('ZRANGE', procs, 0, -1)) do
    redis.call('ZINCRBY', procs, int(gap), p)
  end
end
redis.call('SET', prefix .. 'last', int(now))
for _, d in ipairs(redis.call('ZRANGEBYSCORE', procs, '-inf', now)) do
  if d ~= pid then
    for _, c in ipairs(redis.call('SMEMBERS', prefix .. 'p:' .. d)) do
      local ck = prefix .. 'c:{' .. c .. '}'
      local l = tonumber(redis.call('HGET', ck, 'lease:' .. d) or '0')
      local held = tonumber(redis.call('HGET', ck, 'held:' .. d) or '0')
      if held > l then held = l end
      redis.call('HINCRBY', ck, 'leased', int(held - l))
      redis.call('HSET', ck, 'lease:' .. d, int(held))
    end
    redis.call('ZREM', procs, d)
  end
end
redis.call('ZADD', procs, int(now + ttl), pid)
local out = {}
local n = tonumber(ARGV[4])
for i = 0, n - 1 do
  local b = 5 + i * 6
  local c = ARGV[b]
  local total, committed, want = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  local ck = prefix .. 'c:{' .. c .. '}'
  redis.call('HSETNX', ck, 'budget', ARGV[b + 4])
  redis.call('HSETNX', ck, 'active', ARGV[b + 5])
  local reported = tonumber(redis.call('HGET', ck, 'reported:' .. pid) or '0')
  local lease = tonumber(redis.call('HGET', ck, 'lease:' .. pid) or '0')
  local d = total - reported
  if d > 0 then
    local used = math.min(d, lease)
    redis.call('HINCRBY', ck, 'spent', int(d))
    redis.call('HINCRBY', ck, 'leased', int(-used))
    redis.call('HSET', ck, 'reported:' .. pid, int(total))
    lease = lease - used
  end
  local budget = tonumber(redis.call('HGET', ck, 'budget'))
  local spent = tonumber(redis.call('HGET', ck, 'spent') or '0')
  local leased = tonumber(redis.call('HGET', ck, 'leased') or '0')
  local active = tonumber(redis.call('HGET', ck, 'active'))
  local room = budget - spent - (leased - lease)
  local grant = want
  if grant > room then grant = room end
  if grant < 0 then grant = 0 end
  redis.call('HINCRBY', ck, 'leased', int(grant - lease))
  redis.call('HSET', ck, 'lease:' .. pid, int(grant), 'held:' .. pid,
             int(math.min(grant, committed - total)))
  redis.call('SADD', prefix .. 'p:' .. pid, c)
  table.insert(out, grant)
  table.insert(out, budget)
  table.insert(out, spent)
  table.insert(out, leased + grant - lease)
  table.insert(out, active)
  table.insert(out, math.max(d, 0))
end
return out
"""

# ARGV: prefix, campaign id, budget ('' = unchanged), active ('' = unchanged).
UPDATE = """
local ck = ARGV[1] .. 'c:{' .. ARGV[2] .. '}'
if ARGV[3] ~= '' then redis.call('HSET', ck, 'budget', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HSET', ck, 'active', ARGV[4]) end
return {tonumber(redis.call('HGET', ck, 'budget') or '-1'),
        tonumber(redis.call('HGET', ck, 'active') or '1')}
"""


# Frequency counts: ARGV prefix, then per (campaign, user) key: campaign id, user key,
# delta, window ms. A key lives one window from its first count. Answers the counts.
FREQ = """
local out = {}
for i = 2, #ARGV, 4 do
  local k = ARGV[1] .. 'f:{' .. ARGV[i] .. '}:' .. ARGV[i + 1]
  local v = redis.call('INCRBY', k, ARGV[i + 2])  -- arguments pass through as given
  if redis.call('PTTL', k) < 0 then redis.call('PEXPIRE', k, ARGV[i + 3]) end
  table.insert(out, v)
end
return out
"""
