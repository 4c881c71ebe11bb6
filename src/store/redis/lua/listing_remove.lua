-- Unlists a service, and its group when that was the group's last service.
-- KEYS[1] groups; KEYS[2] the group's services; ARGV[1] group; ARGV[2]
-- service. Returns 1 if the service was listed, else 0.
local removed = redis.call('ZREM', KEYS[2], ARGV[2])
if redis.call('ZCARD', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return removed
