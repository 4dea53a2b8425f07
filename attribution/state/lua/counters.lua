-- counters.lua: add one batch's deltas to campaign counters, at most once per (campaign, partition
-- batch), and give each changed campaign a new version.
--
-- KEYS[i]        campaign counter hash (Keys.campaign) of entry i; all in one hash slot
-- ARGV[1]        now, wall ms
-- ARGV[2]        campaign hash TTL, ms
-- then per entry i: partition, seq, as_of ms, expires (1: the TTL above, 0: never, e.g. subscription
--                   counters), n_mark, n_int, n_dec,
--                   n_mark field names set to 1 (the channel marks 'ch|<channel>': idempotent),
--                   n_int pairs (field, integer delta), n_dec pairs (field, decimal string delta)
--
-- Returns, per entry, the campaign's version after the call (a number). A malformed decimal raises
-- an error marked ATTRIBUTION_BAD_INPUT (bad data); any other error is about Redis itself.
-- Invariants: the fence field 'f|<partition>' holds the seq of the last batch of that input
-- partition applied to this campaign; an entry whose seq is not above it changes nothing (a replay
-- after a crash, or a recovery racing the writer). Versions never go back, even when the hash
-- expired and starts again: max(v + 1, now * 1000). Money never goes through a Lua number (a
-- double): decimals are added as digit strings. A hash written by an earlier version may hold
-- 'channel' (its first channel only): left as it is, readers count it as one more channel seen.

local function split(s)
  local neg = false
  if string.sub(s, 1, 1) == '-' then neg = true; s = string.sub(s, 2) end
  local int, frac = string.match(s, '^(%d*)%.?(%d*)$')
  if int == nil then error('ATTRIBUTION_BAD_INPUT bad decimal ' .. s) end
  if int == '' then int = '0' end
  return neg, int, frac
end

-- magnitude compare / add / subtract of equal-length digit strings
local function add_digits(a, b)
  local out, carry = {}, 0
  for i = #a, 1, -1 do
    local d = string.byte(a, i) - 48 + string.byte(b, i) - 48 + carry
    if d >= 10 then d = d - 10; carry = 1 else carry = 0 end
    out[i + 1] = d
  end
  out[1] = carry
  return table.concat(out)
end

local function sub_digits(a, b) -- a >= b
  local out, borrow = {}, 0
  for i = #a, 1, -1 do
    local d = string.byte(a, i) - string.byte(b, i) - borrow
    if d < 0 then d = d + 10; borrow = 1 else borrow = 0 end
    out[i] = d
  end
  return table.concat(out)
end

local function dec_add(x, y)
  local xn, xi, xf = split(x)
  local yn, yi, yf = split(y)
  local scale = math.max(#xf, #yf)
  xf = xf .. string.rep('0', scale - #xf)
  yf = yf .. string.rep('0', scale - #yf)
  local width = math.max(#xi, #yi)
  local a = string.rep('0', width - #xi) .. xi .. xf
  local b = string.rep('0', width - #yi) .. yi .. yf
  local digits, neg
  if xn == yn then
    digits, neg = add_digits(a, b), xn
  elseif a >= b then
    digits, neg = sub_digits(a, b), xn
  else
    digits, neg = sub_digits(b, a), yn
  end
  local int = string.sub(digits, 1, #digits - scale)
  local frac = string.sub(digits, #digits - scale + 1)
  int = string.gsub(int, '^0+', '')
  if int == '' then int = '0' end
  frac = string.gsub(frac, '0+$', '')
  local s = int
  if frac ~= '' then s = int .. '.' .. frac end
  if s == '0' then return '0' end
  if neg then return '-' .. s end
  return s
end

local now = tonumber(ARGV[1])
local ttl = ARGV[2]
local a = 3
local out = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local partition, seq, as_of = ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2]
  local expires = ARGV[a + 3]
  local n_mark, n_int, n_dec = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6])
  a = a + 7
  local fence = 'f|' .. partition
  local done = tonumber(redis.call('HGET', key, fence) or '0')
  if seq > done then
    for _ = 1, n_mark do
      redis.call('HSET', key, ARGV[a], '1')
      a = a + 1
    end
    for _ = 1, n_int do
      redis.call('HINCRBY', key, ARGV[a], ARGV[a + 1])
      a = a + 2
    end
    for _ = 1, n_dec do
      local old = redis.call('HGET', key, ARGV[a]) or '0'
      redis.call('HSET', key, ARGV[a], dec_add(old, ARGV[a + 1]))
      a = a + 2
    end
    local old_as_of = redis.call('HGET', key, 'as_of')
    if not old_as_of or tonumber(old_as_of) < tonumber(as_of) then
      redis.call('HSET', key, 'as_of', as_of)
    end
    local version = math.max(tonumber(redis.call('HGET', key, 'version') or '0') + 1, now * 1000)
    redis.call('HSET', key, 'version', string.format('%d', version), fence, string.format('%d', seq))
    if expires == '1' then redis.call('PEXPIRE', key, ttl) else redis.call('PERSIST', key) end
  else
    a = a + n_mark + 2 * (n_int + n_dec)
  end
  out[i] = tonumber(redis.call('HGET', key, 'version') or '0')
end
return out
