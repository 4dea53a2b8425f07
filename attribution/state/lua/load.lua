-- load.lua: read the user states a batch needs, in one round trip per hash slot.
--
-- KEYS[1..n]      user state strings (attribution.state.keys.Keys.user), one hash slot
--
-- Returns, per key, its value '<fence>|<msgpack UserState>' (false when absent); the caller splits it.
-- Invariant: read-only.
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('GET', KEYS[i])
end
return out
