-- Unlists a removed service, and its group when that was the group's last
-- service, unless a registration is listing it right now: that one lists
-- before it writes, so unlisting here could leave its records unlisted.
-- A pending entry older than ARGV[4] ms is from a registration that died
-- midway and is ignored (and dropped).
-- KEYS[1] groups; KEYS[2] the group's services; KEYS[3] pending
-- registrations. ARGV[1] group; ARGV[2] service; ARGV[3] now (ms);
-- ARGV[4] how long a pending entry counts (ms).
-- Returns 1 if the service was unlisted, 0 if it was not listed, -1 if a
-- registration kept it.
local prefix = ARGV[1] .. '/' .. ARGV[2] .. '#'
local pending = redis.call('ZRANGEBYLEX', KEYS[3], '[' .. prefix, '(' .. ARGV[1] .. '/' .. ARGV[2] .. '$')
local fresh = tonumber(ARGV[3]) - tonumber(ARGV[4])
for _, member in ipairs(pending) do
  if tonumber(redis.call('ZSCORE', KEYS[3], member)) > fresh then
    return -1
  end
  redis.call('ZREM', KEYS[3], member)
end
local removed = redis.call('ZREM', KEYS[2], ARGV[2])
if redis.call('ZCARD', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return removed
