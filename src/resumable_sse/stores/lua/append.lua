-- Append events for the producer ARGV[1], fenced and idempotent, atomically (EventLog.append).
-- KEYS[1] state hash, KEYS[2] entries stream.
-- ARGV[1] token, ARGV[2] after (the last_seq the producer knows), ARGV[3] final status or '',
-- ARGV[4] max_events, ARGV[5] ttl of a finished stream (ms), then (event type or '', data) pairs.
-- Returns the new last_seq, -1 when the stream is unknown, -2 when the caller is fenced.
local m = redis.call('HMGET', KEYS[1], 's', 't', 'n', 'lt', 'f')
if not m[1] then
  return -1
end
local last = tonumber(m[3])
local after = tonumber(ARGV[2])
local count = (#ARGV - 5) / 2
if last ~= after then
  if m[4] == ARGV[1] and last == after + count then
    return last -- a retry of an append that was applied: nothing to do
  end
  return -2
end
if m[1] ~= 'running' or m[2] ~= ARGV[1] then
  return -2
end
if count == 0 then
  return last
end
local seq = last
for i = 6, #ARGV, 2 do
  seq = seq + 1
  redis.call('XADD', KEYS[2], string.format('%d-0', seq), ARGV[i], ARGV[i + 1])
end
local first = tonumber(m[5])
local max_events = tonumber(ARGV[4])
if seq - first + 1 > max_events then
  redis.call('XTRIM', KEYS[2], 'MAXLEN', max_events)
  first = seq - max_events + 1
end
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'n', seq, 'f', first, 'lt', ARGV[1], 's', ARGV[3], 't', '')
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
else
  redis.call('HSET', KEYS[1], 'n', seq, 'f', first, 'lt', ARGV[1])
  if last == 0 then
    -- The first append created the entries stream: it expires with the state hash.
    local ttl = redis.call('PTTL', KEYS[1])
    if ttl > 0 then
      redis.call('PEXPIRE', KEYS[2], ttl)
    end
  end
end
return seq
