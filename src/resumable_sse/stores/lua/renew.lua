-- Extend the producer's lease, atomically (EventLog.renew).
-- KEYS[1] state hash, KEYS[2] entries stream. ARGV[1] token, ARGV[2] lease (ms), ARGV[3] keep time (ms).
-- Returns 1, or 0 when ARGV[1] is not the running stream's producer.
local m = redis.call('HMGET', KEYS[1], 's', 't')
if m[1] ~= 'running' or m[2] ~= ARGV[1] then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'l', string.format('%d', now + lease))
redis.call('PEXPIRE', KEYS[1], lease + tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[2], lease + tonumber(ARGV[3]))
return 1
