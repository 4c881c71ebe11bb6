-- Removes a node. KEYS[1] nodes hash; ARGV[1] node name.
-- Returns the removed envelope, or false if there was none.
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return old
