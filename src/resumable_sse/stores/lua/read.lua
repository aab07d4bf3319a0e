-- Read up to ARGV[2] entries after sequence number ARGV[1], with the stream's epoch (EventLog.read).
-- KEYS[1] state hash, KEYS[2] entries stream.
-- Returns nil when the stream is unknown, else {epoch, status, seq of the first entry returned,
-- type1, data1, type2, data2, ...}; sequence numbers are contiguous, so the rest follow from the first.
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
local entries = redis.call('XRANGE', KEYS[2], string.format('%d-0', start), '+', 'COUNT', ARGV[2])
local n = 3
for i = 1, #entries do
  local fields = entries[i][2]
  out[n + 1] = fields[1]
  out[n + 2] = fields[2]
  n = n + 2
end
return out
