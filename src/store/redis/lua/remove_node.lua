-- Removes a node.
-- KEYS[1], ARGV[1..4]: where and when changes go (see prelude.lua).
-- KEYS[2] nodes hash. ARGV[5] node name; ARGV[6] instance_id that must
-- match, or "". ARGV[7] the caller's name as a JSON string, or "" without
-- auth; ARGV[8] "1" when the caller may remove nodes others registered.
-- Publishes node_removed (node_expired if its deadline had passed).
-- Returns { "removed", envelope }, { "missing" }, { "owned", owner } when
-- a live node was registered by another identity, or { "other", instance }
-- when a live node belongs to another instance (nothing changes).
local name = ARGV[5]
local old = redis.call('HGET', KEYS[2], name)
if not old then
  return { 'missing' }
end
local expired = is_expired(old, tonumber(CHANGE.now))
if not expired and not may_change(old, ARGV[7], ARGV[8]) then
  return { 'owned', owner_of(old) }
end
if ARGV[6] ~= '' and not expired and instance_of(old) ~= ARGV[6] then
  return { 'other', instance_of(old) }
end
redis.call('HDEL', KEYS[2], name)
local kind = 'node_removed'
if expired then
  kind = 'node_expired'
end
publish(kind, name, old)
return { 'removed', old }
