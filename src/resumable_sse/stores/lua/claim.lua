-- Create a stream and make ARGV[1] its producer, atomically (EventLog.claim).
-- KEYS[1] state hash, KEYS[2] entries stream, KEYS[3] the stream's notification channel.
-- ARGV[1] token, ARGV[2] new epoch, ARGV[3] lease (ms), ARGV[4] time a stream is kept after its lease (ms),
-- ARGV[5] the publish command: a new epoch is announced to followers (see append.lua for the message).
-- Returns {acquired (0/1), epoch, status, first_seq, last_seq}.
local m = redis.call('HMGET', KEYS[1], 'e', 's', 'f', 'n', 't')
if m[1] then
  -- Already exists. A retry of our own claim (its reply was lost) still counts as acquired.
  local mine = (m[2] == 'running' and m[5] == ARGV[1]) and 1 or 0
  return {mine, m[1], m[2], tonumber(m[3]), tonumber(m[4])}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[3])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'e', ARGV[2], 's', 'running', 't', ARGV[1], 'l', string.format('%d', now + lease),
  'n', 0, 'f', 1, 'lt', '', 'x', '')
redis.call('PEXPIRE', KEYS[1], lease + tonumber(ARGV[4]))
redis.call(ARGV[5], KEYS[3], table.concat({ARGV[2], 'running', 1, 0, 0, ''}, '\n'))
return {1, ARGV[2], 'running', 1, 0}
