-- Read up to ARGV[2] events after sequence number ARGV[1], with the stream's shape (EventLog.read).
-- KEYS[1] state hash, KEYS[2] entries stream (one entry per append: id '<last seq>-0', 'n' count, 'd' packed).
-- ARGV[3] the epoch the caller holds, or '': when it is not the stream's, or ARGV[1] lies beyond the last seq (the
-- stream was rewound), the read starts at the first retained event.
-- Returns nil when the stream is unknown, else
-- {epoch, status, first_seq, last_seq, start, first seq of the packed events, packed}:
-- start is the seq of the first event the caller wants (after + 1, or the first retained one); packed joins the
-- stored entries from the one holding start by '\255' (one reply element to parse, not thousands); the caller
-- skips the events before start and keeps ARGV[2] of them. Sequence numbers are contiguous.
local m = redis.call('HMGET', KEYS[1], 'e', 's', 'f', 'n')
if not m[1] then
  return false
end
local start = tonumber(ARGV[1]) + 1
local first = tonumber(m[3])
local last = tonumber(m[4])
if start < first or start > last + 1 or (ARGV[3] ~= '' and ARGV[3] ~= m[1]) then
  start = first -- trimmed, rewound or another epoch: start at the earliest retained entry; the caller sees why
end
local out = {m[1], m[2], first, last, start}
if start > last then
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
    local upto = tonumber(string.sub(id, 1, -3))
    local count = tonumber(fields[2])
    if #parts == 0 then
      out[6] = upto - count + 1
      have = -(start - out[6]) -- events before start do not count
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
out[7] = table.concat(parts, '\255')
return out
