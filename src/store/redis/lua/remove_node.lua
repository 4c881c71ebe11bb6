-- Removes a node. KEYS[1] nodes hash; KEYS[2] revision counter.
-- ARGV[1] node name; ARGV[2] now (ms); ARGV[3] change channel; ARGV[4]
-- group; ARGV[5] service.
-- Publishes node_removed (node_expired if its deadline had passed).
-- Returns the removed envelope, or false if there was none.
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  redis.call('HDEL', KEYS[1], ARGV[1])
  local kind = 'node_removed'
  if is_expired(old, tonumber(ARGV[2])) then
    kind = 'node_expired'
  end
  change(KEYS[2], ARGV[3], kind, ARGV[4], ARGV[5], ARGV[1], old, ARGV[2])
end
return old
