-- Retire an ended deal: delete every gate key in one atomic step, after re-checking (inside Redis, so
-- nothing can slip in between the checks and the delete) that no order or cancel can still arrive or
-- is still waiting to be persisted. All KEYS under the deal's hash tag (one cluster slot).
--
-- KEYS: 1 state, 2 stock, 3 buyers, 4 idem, 5 orders, 6 outbox, 7 kick, 8 inflight, 9 due, 10 follow-up,
--       11 fanout, 12 payments, 13 events, 14 loaded (DealKeys.all_keys)
-- ARGV: 1 '1' to delete, '0' to check only
-- Reply: {verdict, count}: 'retired' (deleted) or 'ready' (check only: it could be deleted);
--        'open' (the gate still admits: count 0), 'outbox' (count entries not yet persisted),
--        'pending' (count entries read by a worker and not acknowledged, i.e. maybe not committed),
--        'unpaid' (count orders still inside their payment window)

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- 1. The gate refuses new orders and cancels (the rule admit.lua and cancel.lua apply). A deal whose
--    state is gone (never loaded, or lost with Redis) refuses both already.
local st = redis.call('HMGET', KEYS[1], 'status', 'close_ms')
if st[1] and st[1] ~= 'ended' and now < tonumber(st[2]) then
  return {'open', 0}
end

-- 2. Nothing waits in the outbox: every accepted order and cancel reached PostgreSQL. The drain XDELs an
--    entry only together with its XACK, after its commit.
local waiting = redis.call('XLEN', KEYS[6])
if waiting > 0 then
  return {'outbox', waiting}
end

-- 3. No consumer group holds an entry it read but has not acknowledged.
if redis.call('EXISTS', KEYS[6]) == 1 then
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[6])) do
    for i = 1, #group, 2 do
      if group[i] == 'pending' and tonumber(group[i + 1]) > 0 then
        return {'pending', tonumber(group[i + 1])}
      end
    end
  end
end

-- 4. No order still awaits payment: every one was paid or expired (shared/lua/settle.lua), so the final state of
--    each is in PostgreSQL once the outbox is empty.
local unpaid = redis.call('ZCARD', KEYS[9])
if unpaid > 0 then
  return {'unpaid', unpaid}
end

if ARGV[1] ~= '1' then
  return {'ready', 0}
end
redis.call('DEL', unpack(KEYS))
return {'retired', 0}
