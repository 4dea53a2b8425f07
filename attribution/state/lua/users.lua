-- users.lua: write the new states of the users of one batch of one input partition.
--
-- KEYS[i]        user state hash (Keys.user) of entry i; all in one hash slot
-- ARGV[1]        the input partition
-- ARGV[2]        the batch seq (from journal.lua)
-- then per user: new blob, TTL ms
--
-- Returns, per user, 1 when written, 0 when refused: the user already holds this batch or a later
-- one of the same partition (a replay, or a recovery that aborted this batch for the user).
-- Invariant: a user's fence 'b' only moves forward within a partition.
local partition, seq = ARGV[1], tonumber(ARGV[2])
local out = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local ok = 1
  local b = redis.call('HGET', key, 'b')
  if b then
    local p, s = string.match(b, '^(%d+):(%d+)')
    if p == partition and tonumber(s) >= seq then ok = 0 end
  end
  if ok == 1 then
    local j = 1 + 2 * i
    redis.call('HSET', key, 's', ARGV[j], 'b', partition .. ':' .. ARGV[2])
    redis.call('PEXPIRE', key, ARGV[j + 1])
  end
  out[i] = ok
end
return out
