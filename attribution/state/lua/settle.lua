-- settle.lua: during recovery of an interrupted batch, find out which of its users were written,
-- and close the batch for the others so that a late write of the old batch can never land.
--
-- KEYS[i]        user state string (Keys.user) of entry i; all in one hash slot
-- ARGV[1]        the input partition
-- ARGV[2]        the seq of the batch being recovered
-- ARGV[3]        TTL ms for a user key created only to hold the mark
--
-- Returns, per user: 1 written by that batch, 0 not written (its fence is now '<p>:<seq>-', so
-- users.lua refuses that batch), 2 already holds a later batch (the recovery is stale).
local partition, seq = ARGV[1], tonumber(ARGV[2])
local mine = partition .. ':' .. ARGV[2]
local out = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local value = redis.call('GET', key)
  local b, blob = nil, ''
  if value then
    local cut = string.find(value, '|', 1, true)
    if cut then b, blob = string.sub(value, 1, cut - 1), string.sub(value, cut + 1) end
  end
  local state = 0
  if b == mine then
    state = 1
  else
    local p, s = nil, nil
    if b then p, s = string.match(b, '^(%d+):(%d+)') end
    if p == partition and tonumber(s) > seq then
      state = 2
    elseif b ~= mine .. '-' then
      if value then
        redis.call('SET', key, mine .. '-|' .. blob, 'KEEPTTL')
      else
        redis.call('SET', key, mine .. '-|', 'PX', ARGV[3])
      end
    end
  end
  out[i] = state
end
return out
