-- Extend the leases of many producers at once, atomically for each (EventLog.renew).
-- KEYS: for each stream its state hash and its entries stream (2 keys a stream, in order).
-- ARGV[1] lease (ms), ARGV[2] keep time (ms), ARGV[3] the tokens, one a stream, joined by '\255' (a byte UTF-8 text
-- never holds): one argument instead of thousands.
-- Returns, for each stream, its last seq when the token still owns the running stream, else -1.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
local keep = lease + tonumber(ARGV[2])
local until_ms = string.format('%d', now + lease)
local tokens = ARGV[3]
local from = 1
local out = {}
for i = 1, #KEYS / 2 do
  local stop = string.find(tokens, '\255', from, true)
  local token = string.sub(tokens, from, (stop or 0) - 1)
  from = (stop or #tokens) + 1
  local m = redis.call('HMGET', KEYS[2 * i - 1], 's', 't', 'n')
  if m[1] == 'running' and m[2] == token then
    redis.call('HSET', KEYS[2 * i - 1], 'l', until_ms)
    redis.call('PEXPIRE', KEYS[2 * i - 1], keep)
    redis.call('PEXPIRE', KEYS[2 * i], keep)
    out[i] = tonumber(m[3])
  else
    out[i] = -1
  end
end
return out
