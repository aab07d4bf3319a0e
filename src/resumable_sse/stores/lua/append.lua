-- Append events for producers, fenced and idempotent, atomically for each stream (EventLog.append). One call serves
-- a whole group commit: the appends of many streams (on a cluster, of one hash slot).
-- KEYS: for each stream its state hash, its entries stream and its channel of every change (3 keys a stream).
-- ARGV[1] the publish command ('PUBLISH', or 'SPUBLISH' on a cluster), ARGV[2] max_events, ARGV[3] ttl of a
-- finished stream (ms); then for each stream ONE argument (one argument a stream keeps the command cheap to build):
-- '<token>\n<after>\n<final status or nothing>\n<number of events>\n<end>\n<packed>', after being the last_seq the
-- producer knows, end the last_seq once the producer's whole append is applied (after + number of events, unless the
-- append was split in consecutive parts, each an argument no longer than Redis takes: then the end of the last part),
-- and packed the events, each '<event type or nothing>\254<data>', joined by '\255' (bytes that never occur in UTF-8
-- text).
-- Each append becomes ONE stream entry: id '<seq of its last event>-0', fields 'n' (number of events) and 'd' (the
-- packed events as they came), so an append costs the server one XADD however many events it holds. It is published
-- on the channel as '<epoch>\n<status>\n<first>\n<last>\n<count>\n<packed>', so that followers need no read.
-- Returns, for each stream, {0, new last_seq, epoch, first_seq}; {1, last_seq} for a retry of an append that was
-- applied before (nothing written); {-1} when the stream is unknown; {-2} when the caller is fenced.
local max_events = tonumber(ARGV[2])
local out = {}

local function append(hash, entries, channel, token, after, final, count, finish, packed)
  local m = redis.call('HMGET', hash, 's', 't', 'n', 'lt', 'f', 'e')
  if not m[1] then
    return {-1}
  end
  local last = tonumber(m[3])
  if last ~= after then
    if m[4] == token and last == finish then
      return {1, last} -- a retry of an append that was applied: nothing to do
    end
    return {-2}
  end
  if m[1] ~= 'running' or m[2] ~= token then
    return {-2}
  end
  local first = tonumber(m[5])
  if count == 0 then
    return {0, last, m[6], first}
  end
  local seq = last + count
  local status = 'running'
  redis.call('XADD', entries, string.format('%d-0', seq), 'n', count, 'd', packed)
  if seq - first + 1 > max_events then
    first = seq - max_events + 1
    -- Drop the entries whose events are all older than first; an entry holding first stays (readers skip the
    -- older events in it: first_seq in the state hash is exact).
    redis.call('XTRIM', entries, 'MINID', string.format('%d-0', first))
  end
  if final ~= '' then
    status = final
    redis.call('HSET', hash, 'n', seq, 'f', first, 'lt', token, 's', final, 't', '')
    redis.call('PEXPIRE', hash, ARGV[3])
    redis.call('PEXPIRE', entries, ARGV[3])
  else
    redis.call('HSET', hash, 'n', seq, 'f', first, 'lt', token)
    if last == 0 then
      -- The first append created the entries stream: it expires with the state hash.
      local ttl = redis.call('PTTL', hash)
      if ttl > 0 then
        redis.call('PEXPIRE', entries, ttl)
      end
    end
  end
  redis.call(ARGV[1], channel, table.concat({m[6], status, first, seq, count, packed}, '\n'))
  return {0, seq, m[6], first}
end

for i = 1, #KEYS / 3 do
  local arg = ARGV[3 + i]
  local e1 = string.find(arg, '\n', 1, true)
  local e2 = string.find(arg, '\n', e1 + 1, true)
  local e3 = string.find(arg, '\n', e2 + 1, true)
  local e4 = string.find(arg, '\n', e3 + 1, true)
  local e5 = string.find(arg, '\n', e4 + 1, true)
  out[i] = append(KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i], string.sub(arg, 1, e1 - 1),
    tonumber(string.sub(arg, e1 + 1, e2 - 1)), string.sub(arg, e2 + 1, e3 - 1), tonumber(string.sub(arg, e3 + 1, e4 - 1)),
    tonumber(string.sub(arg, e4 + 1, e5 - 1)), string.sub(arg, e5 + 1))
end
return out
