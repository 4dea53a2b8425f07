-- touch.lua: make campaigns be republished with a new version although their counters did not
-- change (their project's settings did: the primary basis and so the rate may differ).
--
-- KEYS[1]          dirty zset (Keys.dirty)
-- KEYS[2..]        campaign counter hashes (Keys.campaign)
-- ARGV[1]          now, wall ms
-- ARGV[2..]        the dirty member of each campaign key, same order
--
-- Returns how many campaigns were marked. A campaign whose hash expired is skipped.
-- Invariant: versions only grow (max(v + 1, now * 1000), as in apply.lua).
local now = tonumber(ARGV[1])
local marked = 0
for i = 2, #KEYS do
  local v = redis.call('HGET', KEYS[i], 'version')
  if v then
    local version = math.max(tonumber(v) + 1, now * 1000)
    redis.call('HSET', KEYS[i], 'version', string.format('%d', version))
    redis.call('ZADD', KEYS[1], 'NX', now, ARGV[i])
    marked = marked + 1
  end
end
return marked
