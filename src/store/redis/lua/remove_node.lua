-- Removes a node. KEYS[1] nodes hash; KEYS[2] revision counter.
-- ARGV[1] node name; ARGV[2] now (ms); ARGV[3] change channel; ARGV[4]
-- group; ARGV[5] service; ARGV[6] instance_id that must match, or "".
-- Publishes node_removed (node_expired if its deadline had passed).
-- Returns { "removed", envelope }, { "missing" }, or { "other", instance }
-- when a live node belongs to another instance (nothing changes).
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then
  return { 'missing' }
end
local now = tonumber(ARGV[2])
local expired = is_expired(old, now)
if ARGV[6] ~= '' and not expired and instance_of(old) ~= ARGV[6] then
  return { 'other', instance_of(old) }
end
redis.call('HDEL', KEYS[1], ARGV[1])
local kind = 'node_removed'
if expired then
  kind = 'node_expired'
end
change(KEYS[2], ARGV[3], kind, ARGV[4], ARGV[5], ARGV[1], old, ARGV[2])
return { 'removed', old }
