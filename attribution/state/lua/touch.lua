-- touch.lua: give campaigns a new version although their counters did not change (their project's
-- settings did: the primary basis and so the rate may differ), so that they are republished.
--
-- KEYS[i]        campaign counter hashes (Keys.campaign); all in one hash slot
-- ARGV[1]        now, wall ms
--
-- Returns, per key, the new version, or 0 when the hash expired (nothing to republish).
-- Invariant: versions only grow (max(v + 1, now * 1000), as in counters.lua).
local now = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS do
  local v = redis.call('HGET', KEYS[i], 'version')
  out[i] = 0
  if v then
    local version = math.max(tonumber(v) + 1, now * 1000)
    redis.call('HSET', KEYS[i], 'version', string.format('%d', version))
    out[i] = version
  end
end
return out
