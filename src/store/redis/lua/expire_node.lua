-- Removes a node if its deadline has passed.
-- KEYS[1] nodes hash; KEYS[2] revision counter.
-- ARGV[1] node name; ARGV[2] now (ms); ARGV[3] change channel; ARGV[4]
-- group; ARGV[5] service.
-- Publishes node_expired with the node's last record.
-- Returns 1 if the node was removed, else 0 (gone, renewed, or no TTL).
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old and is_expired(old, tonumber(ARGV[2])) then
  redis.call('HDEL', KEYS[1], ARGV[1])
  change(KEYS[2], ARGV[3], 'node_expired', ARGV[4], ARGV[5], ARGV[1], old, ARGV[2])
  return 1
end
return 0
