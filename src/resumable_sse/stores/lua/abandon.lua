-- A producer gives up a running stream it can no longer continue (the store went back in time under it): the stream
-- becomes a new epoch holding only the terminal entry ('lost', ARGV[3]), atomically (EventLog.abandon). Ending it in
-- place would reuse, for the terminal entry, an id readers already hold for another event.
-- KEYS[1] state hash, KEYS[2] entries stream, KEYS[3] channel of every change, KEYS[4] channel of outside ends.
-- ARGV[1] token, ARGV[2] the new epoch, ARGV[3] the terminal entry's data, ARGV[4] ttl of a finished stream (ms),
-- ARGV[5] the publish command.
-- Returns {epoch, status, first_seq, last_seq} of the new epoch, or false when ARGV[1] does not own the stream.
local m = redis.call('HMGET', KEYS[1], 's', 't')
if m[1] ~= 'running' or m[2] ~= ARGV[1] then
  return false
end
local packed = 'lost\254' .. ARGV[3]
redis.call('DEL', KEYS[2])
redis.call('XADD', KEYS[2], '1-0', 'n', 1, 'd', packed)
redis.call('HSET', KEYS[1], 'e', ARGV[2], 's', 'lost', 't', '', 'n', 1, 'f', 1, 'lt', '', 'x', '')
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
local message = table.concat({ARGV[2], 'lost', 1, 1, 1, packed}, '\n')
redis.call(ARGV[5], KEYS[3], message)
redis.call(ARGV[5], KEYS[4], message)
return {ARGV[2], 'lost', 1, 1}
