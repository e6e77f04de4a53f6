-- Admission gate for one deal. Atomic: Redis runs the whole script with nothing in between.
-- Every check comes before the first write, because Redis does not roll back a script that
-- fails half-way. All KEYS share the deal's hash tag (one cluster slot).
--
-- KEYS: 1 state, 2 stock, 3 buyers, 4 idem, 5 orders, 6 outbox, 7 kick, 8 inflight, 9 due (unpaid orders by pay_by),
--       10 queue (waiting room rules and counters), 11 queue passes (live passes by expiry),
--       12.. the counters of the order rate-limit windows (none when rate limits are off)
-- ARGV: 1 user id, 2 quantity, 3 new order id, 4 idempotency key ('' if none), 5 kick ms,
--       6 '1' when the order carries a queue pass whose HMAC the web node verified for this user and deal,
--       7.. one (amount, seconds) pair per rate-limit window, in the order of KEYS[12..]
-- Reply: {outcome, order id, kick (0/1), remaining stock (-1 unknown, -2 deal not loaded)};
--        'rate_limited' adds the window's number (1-based) and its counter's PTTL (ms)
--
-- ORDER RECORD (the value of KEYS[5] per order id; cancel.lua, settle.lua and load_deal.lua write
-- and read the same): user|qty|price|admitted_ms|status[|pay_by_ms], status one of accepted,
-- canceled, paid, expired; pay_by_ms only on deals with a payment window. Python builds and parses
-- it in shared/order_record.py alone (tests/integration/test_gate.py checks the two agree).

local user = ARGV[1]
local qty = tonumber(ARGV[2])
local order_id = ARGV[3]
local idem = ARGV[4]

-- ORDER RATE LIMITS: fixed windows counted as Flask-Limiter counts them (INCR; the first hit starts
-- the window). Here, not in a command of their own, so an order attempt is one round trip (docs/order-token.md).
-- Counted first, for every attempt, as the limiter did before the view ran; the counters are the
-- only writes before the checks below, and a refused attempt keeps them on purpose.
local over = 0
for i = 12, #KEYS do
  local a = 7 + (i - 12) * 2
  local n = redis.call('INCR', KEYS[i])
  if n == 1 then
    redis.call('EXPIRE', KEYS[i], ARGV[a + 1])
  end
  if over == 0 and n > tonumber(ARGV[a]) then
    over = i - 11
  end
end
if over > 0 then
  return {'rate_limited', '', 0, -1, over, redis.call('PTTL', KEYS[over + 11])}
end

local st = redis.call('HMGET', KEYS[1], 'status', 'open_ms', 'close_ms', 'limit', 'price', 'pay_ms', 'queue')
if not st[1] then
  return {'deal_not_open', '', 0, -2}  -- -2: the gate does not know this deal at all
end

-- The same order id again is the web node's own resend of this very attempt (order ids are new
-- for every attempt; the first reply was lost with a dropped connection): answer it as the first
-- run was, accepted, never as a replay and never admitted twice. Always with a kick: the first
-- run's kick went down with its reply (one extra drain task after a rare resend costs nothing).
if redis.call('HEXISTS', KEYS[5], order_id) == 1 then
  return {'accepted', order_id, 1, -1}
end

-- A replayed Idempotency-Key answers with the first order, whatever happened since.
if idem ~= '' then
  local prev = redis.call('HGET', KEYS[4], user .. ':' .. idem)
  if prev then
    local sep = string.find(prev, ':', 1, true)
    local prev_id = string.sub(prev, 1, sep - 1)
    if tonumber(string.sub(prev, sep + 1)) ~= qty then
      return {'idempotency_mismatch', prev_id, 0, -1}
    end
    return {'replay', prev_id, 0, -1}
  end
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if st[1] == 'ended' or now < tonumber(st[2]) or now >= tonumber(st[3]) then
  return {'deal_not_open', '', 0, -1}
end

-- WAITING ROOM: a queued deal (flag written by load_deal.lua with the rules) admits only buyers let in.
-- The pass's signature was checked by the web node (no I/O); the flag lives here, so every path applies it.
local queued = st[7] == '1'
if queued and ARGV[6] ~= '1' then
  return {'queue_pass_required', '', 0, -1}
end

local limit = tonumber(st[4])
if qty > limit then
  return {'quantity_above_limit', '', 0, -1}
end

local stock = tonumber(redis.call('GET', KEYS[2]) or '0')
if stock < qty then
  return {'sold_out', '', 0, stock}
end

local bought = tonumber(redis.call('HGET', KEYS[3], user) or '0')
if bought + qty > limit then
  return {'limit_exceeded', '', 0, stock}
end

-- All checks passed: from here on only writes, none of which can fail on valid keys.
redis.call('DECRBY', KEYS[2], qty)
redis.call('HINCRBY', KEYS[3], user, qty)
if idem ~= '' then
  redis.call('HSET', KEYS[4], user .. ':' .. idem, order_id .. ':' .. qty)
end
local pay_ms = tonumber(st[6] or '0') or 0
if pay_ms > 0 then
  -- A deal with a payment window: the deadline goes into the order record and, in the same
  -- atomic step, into the due-time index, so no order can hold units without being swept.
  local pay_by = now + pay_ms
  redis.call('HSET', KEYS[5], order_id, user .. '|' .. qty .. '|' .. st[5] .. '|' .. now .. '|accepted|' .. pay_by)
  redis.call('ZADD', KEYS[9], pay_by, order_id)
  redis.call('XADD', KEYS[6], '*', 't', 'o', 'id', order_id, 'u', user, 'q', qty, 'p', st[5], 'ts', now, 'pb', pay_by)
else
  redis.call('HSET', KEYS[5], order_id, user .. '|' .. qty .. '|' .. st[5] .. '|' .. now .. '|accepted')
  -- The order enters the outbox in the same atomic step as the decrement: no crash window
  -- can lose an accepted order or strand its stock.
  redis.call('XADD', KEYS[6], '*', 't', 'o', 'id', order_id, 'u', user, 'q', qty, 'p', st[5], 'ts', now)
end
-- The buyer's in-flight index (scored by user id): "my orders" finds this entry without reading the
-- outbox; the drain removes it in the same MULTI as the entry's XACK.
redis.call('ZADD', KEYS[8], user, order_id .. '|o')
-- WAITING ROOM: the pass's first order frees its live slot (the inlet may let the next buyer in).
if queued and redis.call('ZREM', KEYS[11], user) == 1 then
  redis.call('HINCRBY', KEYS[10], 'used', 1)
end
-- One drain task per kick interval, not one per order.
local kick = redis.call('SET', KEYS[7], '1', 'NX', 'PX', ARGV[5])
return {'accepted', order_id, kick and 1 or 0, stock - qty}
