-- journal.lua: open the next batch of one input partition (compare-and-set on its sequence).
--
-- KEYS[1]        the partition's journal hash (Keys.journal)
-- ARGV[1]        the seq the caller read (0 when the journal did not exist)
-- ARGV[2]        newest event ts (ms) of the batch: the partition clock moves forward only
-- ARGV[3]        the batch's counter deltas per user (opaque msgpack, see attribution.state.ledger)
--
-- Returns {1, seq + 1} when the batch is opened, {0, current seq} when another writer got there
-- first (nothing is written then).
-- Invariant: exactly one batch per (partition, seq); the users and counters it writes carry that
-- seq as their fence, so a replay of the same batch changes nothing.
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
if seq ~= tonumber(ARGV[1]) then return {0, seq} end
local clock = tonumber(redis.call('HGET', KEYS[1], 'clock') or '0')
local new_clock = math.max(clock, tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'seq', seq + 1, 'clock', string.format('%d', new_clock), 'body', ARGV[3])
return {1, seq + 1}
