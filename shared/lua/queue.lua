-- The waiting room in front of one deal's gate: join, status and the inlet, in one atomic step each.
-- All KEYS share the deal's hash tag (one cluster slot).
--
-- Every call first runs the INLET: passes past their expiry leave the live set (counted 'expired'),
-- then, once the sale has started and unless paused, buyers at the head of the line are let in at
-- `rate` per second of time elapsed since the last run (fractions carried in 'credit'), never more
-- than `cap` live passes at once. Why lazily, inside the buyers' own polls and not in a timer task:
-- while anybody waits somebody polls, so the inlet runs as often as needed, on whichever web node is
-- alive, with no process of its own that could die or run twice.
--
-- Order: the line is one sorted set. A join before the sale starts gets a random score below BASE
-- (drawn by the caller: uniform, so the pre-queue is a uniformly random order however early anyone
-- came); a join after the start gets BASE + a counter (first come, first served, behind the pre-queue).
-- ZADD NX: one place per buyer, a second join keeps the first place.
--
-- KEYS: 1 state, 2 stock, 3 queue (rules and counters), 4 line, 5 passes (live, by expiry), 6 admitted
-- ARGV: 1 op ('join' | 'status' | 'inlet'), 2 user id ('' for inlet), 3 random score in [0, BASE) (join),
--       4 pass lifetime ms, 5 proof of work shown (join): leading zero bits of the buyer's solution of a
--       challenge the web node verified as ours for this buyer and deal (0: none)
-- Reply: {state, ahead (-1 unknown), pass expiry ms (0 none), now ms, open ms, admitted by this call,
--         rate, paused (0/1), proof-of-work bits asked}
--   state: waiting, admitted, expired (let in, pass unused and expired), not_joined, sold_out, closed,
--          no_queue, queue_not_open (join before the joining window), proof_of_work_required (join)

local BASE = 1125899906842624 -- 2^50: exact in a double with room for 2^52 FIFO places above it
local MAX_GAP_MS = 5000 -- time the inlet credits at most per run: a long quiet spell is no burst later

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op, user = ARGV[1], ARGV[2]

local st = redis.call('HMGET', KEYS[1], 'status', 'open_ms', 'close_ms')
local q = redis.call('HMGET', KEYS[3], 'rate', 'cap', 'opens_ms', 'paused', 'last_ms', 'credit', 'pow')
if not st[1] or not q[1] then
  return {'no_queue', -1, 0, now, 0, 0, 0, 0, 0}
end
local open_ms, close_ms = tonumber(st[2]), tonumber(st[3])
local rate, paused, pow = tonumber(q[1]), q[4] == '1' and 1 or 0, tonumber(q[7] or '0')
if st[1] == 'ended' or now >= close_ms then
  return {'closed', -1, 0, now, open_ms, 0, rate, paused, pow}
end
-- Sold out is told at once, to joiners and waiters alike: nobody waits for stock that is gone.
if tonumber(redis.call('GET', KEYS[2]) or '0') <= 0 then
  return {'sold_out', -1, 0, now, open_ms, 0, rate, paused, pow}
end

-- INLET
local let_in = 0
local expired = redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
if expired > 0 then
  redis.call('HINCRBY', KEYS[3], 'expired', expired)
end
if now >= open_ms then
  local last = math.max(tonumber(q[5] or '0'), open_ms)
  -- Paused: nothing written (resuming restarts the inlet's clock: shared/deals.py, set_queue).
  if paused == 0 and now > last then
    local cap = tonumber(q[2])
    local credit = tonumber(q[6] or '0') + rate * math.min(now - last, MAX_GAP_MS) / 1000
    let_in = math.min(math.floor(credit), cap - redis.call('ZCARD', KEYS[5]), redis.call('ZCARD', KEYS[4]))
    if let_in > 0 then
      local expires = now + tonumber(ARGV[4])
      local who = redis.call('ZPOPMIN', KEYS[4], let_in)
      for i = 1, #who, 2 do
        redis.call('ZADD', KEYS[5], expires, who[i])
        redis.call('HSET', KEYS[6], who[i], expires)
      end
      redis.call('HINCRBY', KEYS[3], 'admitted', let_in)
    else
      let_in = 0
    end
    -- Credit not spent because the line was empty or the live passes at their bound is not saved up:
    -- at most the fraction of one buyer carries over.
    credit = credit - let_in
    if credit >= 1 then
      credit = credit - math.floor(credit)
    end
    redis.call('HSET', KEYS[3], 'last_ms', now, 'credit', tostring(credit))
  end
end
if op == 'inlet' then
  return {'ok', -1, 0, now, open_ms, let_in, rate, paused, pow}
end

-- JOIN (after the sold-out answer: a sold-out deal costs a joiner no work)
if op == 'join' and not redis.call('HGET', KEYS[6], user) then
  if tonumber(ARGV[5] or '0') < pow and redis.call('ZSCORE', KEYS[4], user) == false then
    return {'proof_of_work_required', -1, 0, now, open_ms, let_in, rate, paused, pow}
  end
  if now < tonumber(q[3]) then
    return {'queue_not_open', -1, 0, now, open_ms, let_in, rate, paused, pow}
  end
  if now < open_ms then
    redis.call('ZADD', KEYS[4], 'NX', ARGV[3], user)
  elseif redis.call('ZSCORE', KEYS[4], user) == false then
    redis.call('ZADD', KEYS[4], BASE + redis.call('HINCRBY', KEYS[3], 'seq', 1), user)
  end
end

-- STATUS (the join answers it too)
local expires = redis.call('HGET', KEYS[6], user)
if expires then
  if tonumber(expires) > now then
    return {'admitted', 0, tonumber(expires), now, open_ms, let_in, rate, paused, pow}
  end
  return {'expired', -1, 0, now, open_ms, let_in, rate, paused, pow}
end
local rank = redis.call('ZRANK', KEYS[4], user)
if rank == false then
  return {'not_joined', -1, 0, now, open_ms, let_in, rate, paused, pow}
end
return {'waiting', rank, 0, now, open_ms, let_in, rate, paused, pow}
