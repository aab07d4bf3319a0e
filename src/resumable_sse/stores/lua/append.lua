-- Append events for the producer ARGV[1], fenced and idempotent, atomically (EventLog.append).
-- KEYS[1] state hash, KEYS[2] entries stream, KEYS[3] the stream's notification channel.
-- ARGV[1] token, ARGV[2] after (the last_seq the producer knows), ARGV[3] final status or '',
-- ARGV[4] max_events, ARGV[5] ttl of a finished stream (ms), ARGV[6] number of events, ARGV[7] the events packed:
-- each is '<event type or nothing>\254<data>', joined by '\255' (bytes that never occur in UTF-8 text).
-- The whole append becomes ONE stream entry: id '<seq of its last event>-0', fields 'n' (number of events) and
-- 'd' (the packed events as they came), so an append costs the server one XADD however many events it holds.
-- ARGV[8] the publish command ('PUBLISH', or 'SPUBLISH' on a cluster): the append is published on KEYS[3] as
-- '<epoch>\n<status>\n<first>\n<last>\n<count>\n<packed>', so that followers need no read.
-- Returns the new last_seq, -1 when the stream is unknown, -2 when the caller is fenced.
local m = redis.call('HMGET', KEYS[1], 's', 't', 'n', 'lt', 'f', 'e')
if not m[1] then
  return -1
end
local last = tonumber(m[3])
local after = tonumber(ARGV[2])
local count = tonumber(ARGV[6])
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
local seq = last + count
local status = 'running'
redis.call('XADD', KEYS[2], string.format('%d-0', seq), 'n', count, 'd', ARGV[7])
local first = tonumber(m[5])
local max_events = tonumber(ARGV[4])
if seq - first + 1 > max_events then
  first = seq - max_events + 1
  -- Drop the entries whose events are all older than first; an entry holding first stays (readers skip the
  -- older events in it: first_seq in the state hash is exact).
  redis.call('XTRIM', KEYS[2], 'MINID', string.format('%d-0', first))
end
if ARGV[3] ~= '' then
  status = ARGV[3]
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
redis.call(ARGV[8], KEYS[3], table.concat({m[6], status, first, seq, count, ARGV[7]}, '\n'))
return seq
