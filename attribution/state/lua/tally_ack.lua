-- tally_ack.lua: after snapshots reached the tallies topic, forget the dirty campaigns whose newest
-- version is now the last record of their key on the topic.
--
-- KEYS[1]          dirty zset (Keys.dirty); score = the newest version of the campaign
-- KEYS[2]          appended hash (Keys.appended): member -> '<offset>:<version>:<newest>': offset and
--                  version of the key's record with the highest offset acknowledged so far, and the
--                  newest version ever acknowledged (same hash slot as KEYS[1])
-- ARGV[3*i-2]      a dirty member
-- ARGV[3*i-1]      the version published for it ('-1': the campaign is gone, forget the mark)
-- ARGV[3*i]        the topic offset that record got
--
-- Returns the number of members removed.
-- Invariants: the compacted topic keeps the record with the highest offset per key, so a mark is
-- removed only when that record carries at least the newest version. Several publishers may race:
-- a stale snapshot appended after a newer one becomes the last record, the mark stays, and the
-- newest version is published again after it.
local removed = 0
for i = 1, #ARGV, 3 do
  local member, version, offset = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local last_version = version
  if version >= 0 then
    local last_offset, newest = -1, -1
    local last = redis.call('HGET', KEYS[2], member)
    if last then
      local o, v, m = string.match(last, '^(%d+):(%d+):(%d+)$')
      last_offset, last_version, newest = tonumber(o), tonumber(v), tonumber(m)
    end
    newest = math.max(newest, version)
    if offset > last_offset then
      last_offset, last_version = offset, version
    end
    redis.call('HSET', KEYS[2], member, string.format('%d:%d:%d', last_offset, last_version, newest))
    if last_version < newest then
      -- a stale snapshot is now the key's last record: the newest must be appended after it
      redis.call('ZADD', KEYS[1], 'GT', newest, member)
    end
  end
  local score = redis.call('ZSCORE', KEYS[1], member)
  if score and (version < 0 or tonumber(score) <= last_version) then
    removed = removed + redis.call('ZREM', KEYS[1], member)
  end
end
return removed
