-- Read up to ARGV[2] events after sequence number ARGV[1], with the stream's epoch (EventLog.read).
-- KEYS[1] state hash, KEYS[2] entries stream (one entry per append: id '<last seq>-0', 'n' count, 'd' packed).
-- Returns nil when the stream is unknown, else {epoch, status, start, first seq of the packed events, packed}:
-- start is the seq of the first event the caller wants (after + 1, or the first retained one); packed joins the
-- stored entries from the one holding start by '\255' (one reply element to parse, not thousands); the caller
-- skips the events before start and keeps ARGV[2] of them. Sequence numbers are contiguous.
local m = redis.call('HMGET', KEYS[1], 'e', 's', 'f', 'n')
if not m[1] then
  return false
end
local start = tonumber(ARGV[1]) + 1
local first = tonumber(m[3])
if start < first then
  start = first -- trimmed: start at the earliest retained entry; the caller sees the gap
end
local out = {m[1], m[2], start}
if start > tonumber(m[4]) then
  return out
end
local want = tonumber(ARGV[2])
local parts = {}
local have = 0
local from = string.format('%d-0', start) -- the entry whose last seq is >= start holds start
while have < want do
  local entries = redis.call('XRANGE', KEYS[2], from, '+', 'COUNT', 16)
  if #entries == 0 then
    break
  end
  for i = 1, #entries do
    local id = entries[i][1]
    local fields = entries[i][2]
    local last = tonumber(string.sub(id, 1, -3))
    local count = tonumber(fields[2])
    if #parts == 0 then
      out[4] = last - count + 1
      have = -(start - out[4]) -- events before start do not count
    end
    parts[#parts + 1] = fields[4]
    have = have + count
    if have >= want then
      break
    end
  end
  if #entries < 16 then
    break -- that was the newest
  end
  from = '(' .. entries[#entries][1]
end
if #parts == 0 then
  return out
end
out[5] = table.concat(parts, '\255')
return out
