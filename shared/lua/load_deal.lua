-- Load a deal's rules into Redis. Never overwrites live stock: a restart, a second beat or a
-- repeated load cannot reset a sale in progress. All KEYS under the deal's hash tag.
--
-- The stock is (re)built only when Redis holds nothing of the deal's sale: no stock, no order
-- record, no outbox entry. A missing stock next to order records or outbox entries means Redis
-- lost part of the deal (an evicted or deleted key): rebuilding from PostgreSQL would ignore the
-- orders still in Redis and sell their units again, so the script leaves the stock missing (the
-- gate then refuses every order) and says so; `reconcile --repair` computes the right value.
-- The check and the write are one atomic step: no admission can slip in between.
--
-- KEYS: 1 state, 2 stock, 3 buyers, 4 orders, 5 outbox, 6 loaded (marker of the last (re)build),
--       7 due (unpaid orders by pay_by), 8 queue (the waiting room's rules and counters)
-- ARGV: 1 status, 2 open_ms, 3 close_ms, 4 limit, 5 price, 6 total, 7 initial stock, 8 title,
--       9 payment window ms (0: no payment step),
--       10 waiting room: '' (none) or 'rate|max live passes|joins open ms|pow bits|paused (0/1)',
--       11 n: how many buyer pairs follow,
--       12.. n pairs of (user id, quantity held): the buyers' totals PostgreSQL knows of, then
--       sextets of (order id, user id, qty, price, admitted ms, pay_by ms): orders persisted but not
--       yet paid, whose records and due entries are rebuilt so they can still be paid or expire
-- Reply: 1 stock set now (first load, or the whole deal rebuilt), 0 already live,
--        -1 stock missing but orders or outbox entries present: not rebuilt (drift)

redis.call('HSET', KEYS[1], 'status', ARGV[1], 'open_ms', ARGV[2], 'close_ms', ARGV[3],
  'limit', ARGV[4], 'price', ARGV[5], 'total', ARGV[6], 'title', ARGV[8], 'pay_ms', ARGV[9] or '0',
  'queue', ARGV[10] ~= '' and '1' or '0')
-- WAITING ROOM: its rules are written with the flag the admission script reads, in one atomic step, so
-- no order can reach a queued deal's gate while the gate does not yet know it is queued. The counters
-- and the line are left as they are (a reload must not reset a queue in progress).
if ARGV[10] ~= '' then
  local rate, cap, opens, pow, paused = string.match(ARGV[10], '^(%d+)|(%d+)|(%d+)|(%d+)|([01])$')
  redis.call('HSET', KEYS[8], 'rate', rate, 'cap', cap, 'opens_ms', opens, 'pow', pow, 'paused', paused)
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
if redis.call('EXISTS', KEYS[4]) == 1 or redis.call('EXISTS', KEYS[5]) == 1 then
  return -1
end
-- Nothing of the sale is left in Redis: the buyers' totals are rebuilt with the stock, so the
-- purchase cap holds on the rebuilt deal as it did before.
redis.call('DEL', KEYS[3])
local pairs_end = 11 + 2 * tonumber(ARGV[11])
for i = 12, pairs_end, 2 do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
end
-- Unpaid orders hold their units (they are in the buyers' totals and not in the stock): without
-- their records and due entries they could neither be paid nor expire, and their units would be
-- stranded. Their records: ORDER RECORD in admit.lua.
for i = pairs_end + 1, #ARGV, 6 do
  redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1] .. '|' .. ARGV[i + 2] .. '|' .. ARGV[i + 3] .. '|' ..
    ARGV[i + 4] .. '|accepted|' .. ARGV[i + 5])
  redis.call('ZADD', KEYS[7], ARGV[i + 5], ARGV[i])
end
redis.call('SET', KEYS[2], ARGV[7])
local t = redis.call('TIME')
redis.call('HSET', KEYS[6], 'at_ms', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000),
  'stock', ARGV[7], 'held', tonumber(ARGV[6]) - tonumber(ARGV[7]))
return 1
