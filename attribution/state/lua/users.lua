-- users.lua: write the new states of the users of one batch of one input partition.
--
-- KEYS[i]        user state string (Keys.user) of entry i; all in one hash slot
-- ARGV[1]        the input partition
-- ARGV[2]        the batch seq (from journal.lua)
-- then per user: the new value '<partition>:<seq>|<msgpack UserState>', TTL ms
--
-- Returns, per user, 1 when written, 0 when refused: the user already holds this batch or a later
-- one of the same partition (a replay, or a recovery that aborted this batch for the user).
-- Invariant: a user's fence (the value's prefix up to '|') only moves forward within a partition.
local partition, seq = ARGV[1], tonumber(ARGV[2])
local out = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local ok = 1
  -- a fence is '<partition>:<seq>' or '<partition>:<seq>-': 32 bytes always hold it
  local head = redis.call('GETRANGE', key, 0, 31)
  if head ~= '' then
    local p, s = string.match(head, '^(%d+):(%d+)')
    if p == partition and tonumber(s) >= seq then ok = 0 end
  end
  if ok == 1 then
    local j = 1 + 2 * i
    redis.call('SET', key, ARGV[j], 'PX', ARGV[j + 1])
  end
  out[i] = ok
end
return out
