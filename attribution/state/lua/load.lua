-- load.lua: read the user states a batch needs, in one round trip per hash slot.
--
-- KEYS[1..n]      user state hashes (attribution.state.keys.Keys.user), one hash slot
--
-- Returns a flat array: for each key its blob then its batch fence (false when absent).
-- Invariant: read-only.
local out = {}
for i = 1, #KEYS do
  local pair = redis.call('HMGET', KEYS[i], 's', 'b')
  out[#out + 1] = pair[1]
  out[#out + 1] = pair[2]
end
return out
