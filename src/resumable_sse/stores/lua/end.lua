-- End a running stream from outside its producer with one terminal entry, at most once (EventLog.end).
-- KEYS[1] state hash, KEYS[2] entries stream.
-- ARGV[1] status, ARGV[2] data, ARGV[3] '1' to end only when the lease has expired (server clock),
-- ARGV[4] a nonce naming this call (so that a retry whose first reply was lost still returns 1),
-- ARGV[5] ttl of a finished stream (ms), ARGV[6] max_events.
-- Returns 1 when this call wrote the terminal entry, else 0.
local m = redis.call('HMGET', KEYS[1], 's', 'l', 'n', 'f', 'x')
if not m[1] then
  return 0
end
if m[1] ~= 'running' then
  return (m[5] == ARGV[4]) and 1 or 0
end
if ARGV[3] == '1' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if tonumber(m[2]) > now then
    return 0
  end
end
local seq = tonumber(m[3]) + 1
redis.call('XADD', KEYS[2], string.format('%d-0', seq), 'n', 1, 'd', ARGV[1] .. '\254' .. ARGV[2])
local first = tonumber(m[4])
local max_events = tonumber(ARGV[6])
if seq - first + 1 > max_events then
  first = seq - max_events + 1
  redis.call('XTRIM', KEYS[2], 'MINID', string.format('%d-0', first))
end
redis.call('HSET', KEYS[1], 's', ARGV[1], 't', '', 'n', seq, 'f', first, 'lt', '', 'x', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return 1
