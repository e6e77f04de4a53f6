-- Payment decisions of a deal with a payment window: every order ends paid or expired, exactly once.
-- Paying and expiring are two modes of this one script, so a payment racing its deadline is decided
-- in one atomic step against the same record and the same clock (Redis TIME): whichever runs first
-- wins, and the other sees the decided state. All checks before the first write; all KEYS under the
-- deal's hash tag (one cluster slot).
--
-- KEYS: 1 stock, 2 buyers, 3 orders, 4 outbox, 5 kick, 6 due, 7 events, 8 payments, 9 inflight
-- ARGV (mode 'pay'):     1 'pay', 2 order id, 3 event id, 4 payment id, 5 kick ms, 6 hold ms
-- ARGV (mode 'decline'): 1 'decline', 2 order id, 3 event id, 4 payment id, 5 kick ms, 6 hold ms
-- ARGV (mode 'expire'):  1 'expire', 2 at most this many due orders, 3 unused, 4 unused, 5 kick ms, 6 hold ms
-- ARGV (mode 'close'):   1 'close', 2 order id, 3 unused, 4 payment id, 5 kick ms, 6 hold ms
-- Reply 'pay' / 'decline': {outcome, detail, kick}
--   outcomes: paid | refund (detail: expired | canceled | no_window) | already_paid (detail: payment id
--   that paid it) | declined | ignored | not_found | duplicate (detail: the first delivery's outcome)
-- Reply 'expire': {expired, seen, kick}
-- Reply 'close': {outcome, detail, kick}: expired | closed (not due yet) | settled (detail: its state) | not_found
--
-- An OPEN PAYMENT is one the provider opened for the order (payments[order id] = 'provider|payment id|…')
-- and the shop has not closed at the provider (no payments['order id:closed']). Why an order with an open
-- payment is held past pay_by (for at most 'hold ms'): the provider may have taken the money before the
-- deadline and its event not reached us yet. The check job (shared/payments/check.py) asks the provider,
-- then either pays the order (the payment succeeded) or closes the payment at the provider and expires the
-- order here (mode 'close'); from then on no success can follow. Only a provider unreachable for the whole
-- hold lets the sweep expire such an order, and a success after that is refunded (reason 'expired').

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function parse(rec)
  -- The order record (ORDER RECORD in admit.lua).
  local owner, qty, price, ts, status, rest = string.match(rec, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)(.*)$')
  local pay_by = 0
  if rest ~= '' then pay_by = tonumber(string.sub(rest, 2)) or 0 end
  return owner, qty, price, ts, status, pay_by
end

-- Give the units and the buyer's quantity back and send the expiry through the outbox (PostgreSQL
-- follows). Called only on an 'accepted' record, which it turns 'expired': never twice per order.
-- The open payment's id, or nil (see OPEN PAYMENT above).
local function open_payment(order_id)
  local p = redis.call('HMGET', KEYS[8], order_id, order_id .. ':closed')
  if not p[1] or p[2] then return nil end
  return string.match(p[1], '^[^|]*|([^|]*)')
end

local hold_ms = tonumber(ARGV[6]) or 0

local function expire(order_id, owner, qty, price, ts, pay_by)
  redis.call('INCRBY', KEYS[1], qty)
  redis.call('HINCRBY', KEYS[2], owner, -tonumber(qty))
  redis.call('HSET', KEYS[3], order_id, owner .. '|' .. qty .. '|' .. price .. '|' .. ts .. '|expired|' .. pay_by)
  redis.call('ZREM', KEYS[6], order_id)
  redis.call('XADD', KEYS[4], '*', 't', 'x', 'id', order_id, 'u', owner, 'q', qty, 'p', price, 'ts', ts,
    'pb', pay_by, 'ct', now)
  -- The buyer's in-flight index (see admit.lua): "my orders" shows the expiry before PostgreSQL has it.
  redis.call('ZADD', KEYS[9], owner, order_id .. '|x')
end

local mode = ARGV[1]

if mode == 'expire' then
  -- The sweep: the index holds unpaid orders only (admission adds, every decision removes), so a
  -- sweep killed before this script ran left the index intact, and one killed after it had already
  -- finished its batch: nothing is forgotten and nothing expires twice.
  local due = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
  local expired = 0
  for _, order_id in ipairs(due) do
    local rec = redis.call('HGET', KEYS[3], order_id)
    if rec then
      local owner, qty, price, ts, status, pay_by = parse(rec)
      if status == 'accepted' and pay_by > 0 and pay_by <= now then
        if now < pay_by + hold_ms and open_payment(order_id) then
          -- Held: the check job asks the provider first (OPEN PAYMENT above); stays in the index.
        else
          expire(order_id, owner, qty, price, ts, pay_by)
          expired = expired + 1
        end
      else
        redis.call('ZREM', KEYS[6], order_id)
      end
    else
      redis.call('ZREM', KEYS[6], order_id)
    end
  end
  local kick = 0
  if expired > 0 and redis.call('SET', KEYS[5], '1', 'NX', 'PX', ARGV[5]) then kick = 1 end
  return {expired, #due, kick}
end

local order_id, event_id, payment_id = ARGV[2], ARGV[3], ARGV[4]

if mode == 'close' then
  -- The provider confirmed the payment is closed (no success can follow): remember it, and expire the
  -- order if its deadline passed. No record: nothing is written (a retired deal's keys stay deleted).
  local rec = redis.call('HGET', KEYS[3], order_id)
  if not rec then return {'not_found', '', 0} end
  local owner, qty, price, ts, status, pay_by = parse(rec)
  local p = redis.call('HGET', KEYS[8], order_id)
  if p and string.match(p, '^[^|]*|([^|]*)') == payment_id then
    redis.call('HSET', KEYS[8], order_id .. ':closed', now)
  end
  if status ~= 'accepted' or pay_by == 0 then return {'settled', status, 0} end
  if now < pay_by then return {'closed', '', 0} end
  expire(order_id, owner, qty, price, ts, pay_by)
  local kick = 0
  if redis.call('SET', KEYS[5], '1', 'NX', 'PX', ARGV[5]) then kick = 1 end
  return {'expired', '', kick}
end

-- A provider delivers an event at least once, and in any order: the first delivery decides, a
-- repeated one answers what the first did and changes nothing.
local seen = redis.call('HGET', KEYS[7], event_id)
if seen then
  return {'duplicate', seen, 0}
end

local outcome, detail, wrote = 'ignored', '', false
local rec = redis.call('HGET', KEYS[3], order_id)
if not rec then
  -- Written nowhere: the deal may have retired (its keys are gone for good and must stay gone), or Redis
  -- lost it; the caller decides from PostgreSQL or asks the provider to send the event again.
  return {'not_found', '', 0}
else
  local owner, qty, price, ts, status, pay_by = parse(rec)
  if mode == 'pay' then
    if status == 'paid' then
      outcome, detail = 'already_paid', (redis.call('HGET', KEYS[8], order_id .. ':paid') or '')
    elseif status == 'expired' or status == 'canceled' then
      outcome, detail = 'refund', status  -- the units went back: the money must too
    elseif pay_by == 0 then
      outcome, detail = 'refund', 'no_window'  -- nothing to pay for: never keep it
    elseif now >= pay_by and not (now < pay_by + hold_ms and open_payment(order_id) == payment_id) then
      -- Paid after its deadline but before a sweep reached it: the deadline decides, not the sweep. (Held
      -- with this payment still open, the provider took it before the shop closed it: it pays, below.)
      expire(order_id, owner, qty, price, ts, pay_by)
      outcome, detail, wrote = 'refund', 'expired', true
    else
      redis.call('HSET', KEYS[3], order_id, owner .. '|' .. qty .. '|' .. price .. '|' .. ts .. '|paid|' .. pay_by)
      redis.call('ZREM', KEYS[6], order_id)
      redis.call('HSET', KEYS[8], order_id .. ':paid', payment_id)
      redis.call('HDEL', KEYS[8], order_id .. ':declined')
      redis.call('XADD', KEYS[4], '*', 't', 'p', 'id', order_id, 'u', owner, 'q', qty, 'p', price, 'ts', ts,
        'pb', pay_by, 'ct', now, 'pid', payment_id)
      redis.call('ZADD', KEYS[9], owner, order_id .. '|p')
      outcome, wrote = 'paid', true
    end
  elseif mode == 'decline' then
    -- A declined card changes no state: the buyer may try again while time remains. Out of order
    -- (declined after paid or expired) it is ignored.
    if status == 'accepted' and pay_by > 0 and now < pay_by then
      redis.call('HSET', KEYS[8], order_id .. ':declined', now)
      outcome = 'declined'
    end
  else
    return redis.error_reply('settle.lua: unknown mode ' .. tostring(mode))
  end
end
redis.call('HSET', KEYS[7], event_id, outcome .. ':' .. detail)
local kick = 0
if wrote and redis.call('SET', KEYS[5], '1', 'NX', 'PX', ARGV[5]) then kick = 1 end
return {outcome, detail, kick}
