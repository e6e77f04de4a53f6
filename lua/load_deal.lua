-- Load a deal's rules into Redis. Never overwrites live stock: a restart, a second beat or a
-- repeated load cannot reset a sale in progress. All KEYS under the deal's hash tag.
--
-- KEYS: 1 state, 2 stock
-- ARGV: 1 status, 2 open_ms, 3 close_ms, 4 limit, 5 price, 6 total, 7 initial stock, 8 title,
--       9 payment window ms (0: no payment step)
-- Reply: 1 if the stock was set now, 0 if it was already live

redis.call('HSET', KEYS[1], 'status', ARGV[1], 'open_ms', ARGV[2], 'close_ms', ARGV[3],
  'limit', ARGV[4], 'price', ARGV[5], 'total', ARGV[6], 'title', ARGV[8], 'pay_ms', ARGV[9] or '0')
local set = redis.call('SET', KEYS[2], ARGV[7], 'NX')
if set then return 1 end
return 0
