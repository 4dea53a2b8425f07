-- apply.lua: write the result of one batch atomically: user states, partition clocks, campaign
-- counters, and the dirty set that makes the tally publisher republish changed campaigns.
--
-- KEYS[1]                       dirty zset (Keys.dirty)
-- KEYS[2 .. 1+nc]               partition clock strings (Keys.clock)
-- KEYS[2+nc .. 1+nc+nu]         user state hashes (Keys.user)
-- KEYS[2+nc+nu .. 1+nc+nu+ncamp]  campaign counter hashes (Keys.campaign)
-- KEYS[2+nc+nu+ncamp .. ]       the project campaign set of each campaign above, same order
--                               (Keys.project_campaigns; the dirty member is added to it)
-- ARGV[1]                       now, wall ms (score of a new dirty member)
-- ARGV[2]                       campaign hash TTL, ms
-- ARGV[3], ARGV[4], ARGV[5]     nc, nu, ncamp: how many clocks, users, campaigns follow
-- then per clock:    new event-time ms (kept only if greater)
-- then per user:     expected CAS version ('0' when absent), new blob, TTL ms
-- then per campaign: dirty member, as_of ms, channel ('' for none), n_int, n_dec,
--                    n_int pairs (field, integer delta), n_dec pairs (field, decimal string delta)
--
-- Returns {'ok'} or {'conflict', user_key}: all user versions are checked before anything is
-- written, so a conflict writes nothing.
-- Invariants: all-or-nothing; a batch re-applied after a crash is refused by the CAS version or
-- never sent (the caller fences by (topic, partition, offset) inside each user's state).
-- Money never goes through a Lua number (a double): decimals are added as digit strings.

local function split(s)
  local neg = false
  if string.sub(s, 1, 1) == '-' then neg = true; s = string.sub(s, 2) end
  local int, frac = string.match(s, '^(%d*)%.?(%d*)$')
  if int == nil then error('bad decimal ' .. s) end
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

local now = ARGV[1]
local tally_ttl = tonumber(ARGV[2])
local nc, nu, ncamp = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local a = 6

-- 1. check every CAS version first: a conflict must write nothing
local uk, ua = 2 + nc, a + nc
for i = 0, nu - 1 do
  local v = redis.call('HGET', KEYS[uk + i], 'v') or '0'
  if v ~= ARGV[ua + 3 * i] then
    return {'conflict', KEYS[uk + i]}
  end
end

-- 2. clocks only move forward
for i = 0, nc - 1 do
  local key, ts = KEYS[2 + i], ARGV[a + i]
  local old = redis.call('GET', key)
  if not old or tonumber(old) < tonumber(ts) then redis.call('SET', key, ts) end
end

-- 3. user states
for i = 0, nu - 1 do
  local key = KEYS[uk + i]
  local j = ua + 3 * i
  redis.call('HSET', key, 'v', tonumber(ARGV[j]) + 1, 's', ARGV[j + 1])
  redis.call('PEXPIRE', key, ARGV[j + 2])
end

-- 4. campaign counters
local ck = uk + nu
a = ua + 3 * nu
for i = 0, ncamp - 1 do
  local key = KEYS[ck + i]
  local member, as_of, channel = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local n_int, n_dec = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  a = a + 5
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
  if channel ~= '' then redis.call('HSETNX', key, 'channel', channel) end
  -- a version never goes back, even when the hash expired and starts again: max(v + 1, now * 1000)
  local version = math.max(tonumber(redis.call('HGET', key, 'version') or '0') + 1, tonumber(now) * 1000)
  redis.call('HSET', key, 'version', string.format('%d', version))
  redis.call('PEXPIRE', key, tally_ttl)
  redis.call('ZADD', KEYS[1], 'NX', now, member)
  redis.call('SADD', KEYS[ck + ncamp + i], member)
  redis.call('PEXPIRE', KEYS[ck + ncamp + i], tally_ttl)
end
return {'ok'}
