-- settings.lua: keep the newest settings document of a project, so that a worker never goes back to
-- an older version after a restart (a compacted settings topic may keep only an older record).
--
-- KEYS[1]        the settings hash (Keys.settings): project id -> '<version>|<JSON document>'
-- ARGV[1]        project id
-- ARGV[2]        version (integer >= 0)
-- ARGV[3]        the settings document (JSON)
--
-- Returns 1 when stored, 0 when the hash already holds this version or a newer one.
-- Invariant: the stored version of a project only grows.
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  local version = tonumber(string.match(current, '^(%d+)|'))
  if version and version >= tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. ARGV[3])
return 1
