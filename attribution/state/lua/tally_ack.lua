-- tally_ack.lua: forget dirty campaigns whose published snapshot is still their newest version.
--
-- KEYS[1]          dirty zset (Keys.dirty); score = the newest version of the campaign
-- ARGV[2*i-1]      a dirty member
-- ARGV[2*i]        the version that was published for it ('-1': the campaign is gone, forget it)
--
-- Returns the number of members removed.
-- Invariant: whoever changes a campaign raises its score to the new version after the change
-- (ZADD GT), so a member is removed only when no change is newer than what was published.
local removed = 0
for i = 1, #ARGV, 2 do
  local member, published = ARGV[i], tonumber(ARGV[i + 1])
  local score = redis.call('ZSCORE', KEYS[1], member)
  if score and (published < 0 or tonumber(score) <= published) then
    removed = removed + redis.call('ZREM', KEYS[1], member)
  end
end
return removed
