-- End a running stream from outside its producer with one terminal entry, at most once (EventLog.end), or look
-- at it and end it as lost only when its producer's lease has run out (EventLog.audit).
-- KEYS[1] state hash, KEYS[2] entries stream, KEYS[3] the stream's channel of every change, KEYS[4] its channel of
-- ends from outside the producer (the producer's process follows that one: its own appends it knows).
-- ARGV[1] status, ARGV[2] data, ARGV[3] '1' to end only when the lease has expired (server clock),
-- ARGV[4] a nonce naming this call (so that a retry whose first reply was lost still counts as the one that ended),
-- ARGV[5] ttl of a finished stream (ms), ARGV[6] max_events, ARGV[7] the publish command (see append.lua).
-- Returns false when the stream is unknown, else {ended (0/1), epoch, status, first_seq, last_seq} after the call.
local m = redis.call('HMGET', KEYS[1], 's', 'l', 'n', 'f', 'x', 'e')
if not m[1] then
  return false
end
if m[1] ~= 'running' then
  return {(m[5] == ARGV[4]) and 1 or 0, m[6], m[1], tonumber(m[4]), tonumber(m[3])}
end
if ARGV[3] == '1' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if tonumber(m[2]) > now then
    return {0, m[6], m[1], tonumber(m[4]), tonumber(m[3])}
  end
end
local seq = tonumber(m[3]) + 1
local packed = ARGV[1] .. '\254' .. ARGV[2]
redis.call('XADD', KEYS[2], string.format('%d-0', seq), 'n', 1, 'd', packed)
local first = tonumber(m[4])
local max_events = tonumber(ARGV[6])
if seq - first + 1 > max_events then
  first = seq - max_events + 1
  redis.call('XTRIM', KEYS[2], 'MINID', string.format('%d-0', first))
end
redis.call('HSET', KEYS[1], 's', ARGV[1], 't', '', 'n', seq, 'f', first, 'lt', '', 'x', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
local message = table.concat({m[6], ARGV[1], first, seq, 1, packed}, '\n')
redis.call(ARGV[7], KEYS[3], message)
redis.call(ARGV[7], KEYS[4], message)
return {1, m[6], ARGV[1], first, seq}
