-- Removes a service's record and all its nodes.
-- KEYS[1], ARGV[1..4]: where and when changes go (see prelude.lua).
-- KEYS[2] service key; KEYS[3] nodes hash; KEYS[4] the listed mark.
-- Publishes node_removed (or node_expired) per node, then service_removed
-- if the service had a record or nodes.
-- Returns { 1 if the record existed else 0, name1, envelope1, name2, ... }.
local now = tonumber(CHANGE.now)
local record = redis.call('GET', KEYS[2])
local nodes = redis.call('HGETALL', KEYS[3])
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
for i = 1, #nodes, 2 do
  local kind = 'node_removed'
  if is_expired(nodes[i + 1], now) then
    kind = 'node_expired'
  end
  publish(kind, nodes[i], nodes[i + 1])
end
if record or #nodes > 0 then
  publish('service_removed', '', record or 'null')
end
local had_record = 0
if record then
  had_record = 1
end
table.insert(nodes, 1, had_record)
return nodes
