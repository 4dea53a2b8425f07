-- load.lua: read the state a batch needs, in one round trip and one consistent snapshot.
--
-- KEYS[1..n]      user state hashes (attribution.state.keys.Keys.user)
-- KEYS[n+1..]     partition clock strings (Keys.clock)
-- ARGV[1]         n, the number of user keys
--
-- Returns a flat array: for each user key its CAS version and blob (false when absent), then for
-- each clock key its value (false when absent).
-- Invariant: read-only.
local n = tonumber(ARGV[1])
local out = {}
for i = 1, n do
  local pair = redis.call('HMGET', KEYS[i], 'v', 's')
  out[#out + 1] = pair[1]
  out[#out + 1] = pair[2]
end
for i = n + 1, #KEYS do
  out[#out + 1] = redis.call('GET', KEYS[i])
end
return out
