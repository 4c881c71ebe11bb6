-- Removes a node if its deadline has passed.
-- KEYS[1], ARGV[1..4]: where and when changes go (see prelude.lua).
-- KEYS[2] nodes hash. ARGV[5] node name.
-- Publishes node_expired with the node's last record.
-- Returns 1 if the node was removed, else 0 (gone, renewed, or no TTL).
local name = ARGV[5]
local old = redis.call('HGET', KEYS[2], name)
if old and is_expired(old, tonumber(CHANGE.now)) then
  redis.call('HDEL', KEYS[2], name)
  publish('node_expired', name, old)
  return 1
end
return 0
