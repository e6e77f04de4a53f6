-- Cancel one order: give back its stock and the user's quantity exactly once.
-- All checks before the first write; all KEYS under the deal's hash tag.
--
-- KEYS: 1 state, 2 stock, 3 buyers, 4 idem, 5 orders, 6 outbox, 7 kick, 8 inflight, 9 due
-- ARGV: 1 order id, 2 requesting user id, 3 '1' if the requester is an admin,
--       4 kick ms, 5 '1' to skip the open-deal check (admin dropping a dead letter)
-- Reply: {outcome, remaining stock, kick}

local order_id = ARGV[1]
local rec = redis.call('HGET', KEYS[5], order_id)
if not rec then
  return {'not_found', -1, 0}
end
-- The order record (ORDER RECORD in admit.lua); rest: '' or '|pay_by_ms', kept as it is.
local owner, qty, price, ts, status, rest = string.match(rec, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)(.*)$')
if ARGV[3] ~= '1' and owner ~= ARGV[2] then
  return {'not_found', -1, 0}
end
if status == 'canceled' then
  return {'already_canceled', tonumber(redis.call('GET', KEYS[2]) or '0'), 0}
end
-- A paid order is final (refused, never refunded by a cancel); an expired one already gave its
-- units back. Both were decided by shared/lua/settle.lua, which this script never overrides.
if status == 'paid' or status == 'expired' then
  return {status, -1, 0}
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[5] ~= '1' then
  local st = redis.call('HMGET', KEYS[1], 'status', 'open_ms', 'close_ms')
  if not st[1] or st[1] == 'ended' or now < tonumber(st[2]) or now >= tonumber(st[3]) then
    return {'deal_not_open', -1, 0}
  end
end

local remaining = redis.call('INCRBY', KEYS[2], qty)
redis.call('HINCRBY', KEYS[3], owner, -tonumber(qty))
redis.call('HSET', KEYS[5], order_id, owner .. '|' .. qty .. '|' .. price .. '|' .. ts .. '|canceled' .. rest)
-- No longer due: the expiry sweep must not give the same units back a second time.
redis.call('ZREM', KEYS[9], order_id)
-- The cancel travels through the same outbox, behind its order, so the workers persist it
-- whether or not the order's row is already written.
redis.call('XADD', KEYS[6], '*', 't', 'c', 'id', order_id, 'u', owner, 'q', qty, 'p', price, 'ts', ts, 'ct', now)
redis.call('ZADD', KEYS[8], owner, order_id .. '|c')
local kick = redis.call('SET', KEYS[7], '1', 'NX', 'PX', ARGV[4])
return {'canceled', remaining, kick and 1 or 0}
