-- End a running stream from outside its producer with one terminal entry, at most once (EventLog.end), or look
-- at streams and end each as lost only when its producer's lease has run out (EventLog.audit: many streams in one
-- call on a single server, so that a reconnect storm's audits of the streams it starts following cost one command).
-- KEYS: for each stream, 4 keys: its state hash, its entries stream, its channel of every change, its channel of
-- ends from outside the producer (the producer's process follows that one: its own appends it knows).
-- ARGV[1] status, ARGV[2] data, ARGV[3] '1' to end only when the lease has expired (server clock),
-- ARGV[4] a nonce naming this call (so that a retry whose first reply was lost still counts as the one that ended),
-- ARGV[5] ttl of a finished stream (ms), ARGV[6] max_events, ARGV[7] the publish command (see append.lua).
-- Returns, for each stream in order, false when it is unknown, else {ended (0/1), epoch, status, first_seq,
-- last_seq} after the call.
local now = nil
if ARGV[3] == '1' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local packed = ARGV[1] .. '\254' .. ARGV[2]
local max_events = tonumber(ARGV[6])
local out = {}
for i = 0, #KEYS / 4 - 1 do
  local state, entries = KEYS[4 * i + 1], KEYS[4 * i + 2]
  local m = redis.call('HMGET', state, 's', 'l', 'n', 'f', 'x', 'e')
  if not m[1] then
    out[i + 1] = false
  elseif m[1] ~= 'running' then
    out[i + 1] = {(m[5] == ARGV[4]) and 1 or 0, m[6], m[1], tonumber(m[4]), tonumber(m[3])}
  elseif now ~= nil and tonumber(m[2]) > now then
    out[i + 1] = {0, m[6], m[1], tonumber(m[4]), tonumber(m[3])}
  else
    local seq = tonumber(m[3]) + 1
    redis.call('XADD', entries, string.format('%d-0', seq), 'n', 1, 'd', packed)
    local first = tonumber(m[4])
    if seq - first + 1 > max_events then
      first = seq - max_events + 1
      redis.call('XTRIM', entries, 'MINID', string.format('%d-0', first))
    end
    redis.call('HSET', state, 's', ARGV[1], 't', '', 'n', seq, 'f', first, 'lt', '', 'x', ARGV[4])
    redis.call('PEXPIRE', state, ARGV[5])
    redis.call('PEXPIRE', entries, ARGV[5])
    local message = table.concat({m[6], ARGV[1], first, seq, 1, packed}, '\n')
    redis.call(ARGV[7], KEYS[4 * i + 3], message)
    redis.call(ARGV[7], KEYS[4 * i + 4], message)
    out[i + 1] = {1, m[6], ARGV[1], first, seq}
  end
end
return out
