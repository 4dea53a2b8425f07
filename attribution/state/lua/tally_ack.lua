-- tally_ack.lua: forget dirty campaigns whose published snapshot is still their newest version.
--
-- KEYS[1]          dirty zset (Keys.dirty)
-- KEYS[2..]        campaign counter hashes (Keys.campaign), one per member below
-- ARGV[2*i-1]      dirty member of KEYS[i+1] ('project:campaign')
-- ARGV[2*i]        the version that was published for it
--
-- ARGV[#ARGV]      now, wall ms (score when a member is marked again)
--
-- Returns the number of members removed.
-- Invariants: a campaign changed after its snapshot was read stays dirty (or is marked again), so a
-- snapshot newer than ours is published after ours reached the broker: with several publishers, the
-- last record of a key on the compacted topic is never older than the newest version.
local removed = 0
local now = ARGV[#ARGV]
for i = 2, #KEYS do
  local member, published = ARGV[2 * (i - 1) - 1], ARGV[2 * (i - 1)]
  local v = redis.call('HGET', KEYS[i], 'version') or '0'
  if tonumber(v) <= tonumber(published) then
    removed = removed + redis.call('ZREM', KEYS[1], member)
  else
    redis.call('ZADD', KEYS[1], 'NX', now, member)
  end
end
return removed
