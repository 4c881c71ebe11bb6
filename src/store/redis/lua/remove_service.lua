-- Removes a service's record and all its nodes.
-- KEYS[1] service key; KEYS[2] nodes hash; KEYS[3] revision counter.
-- ARGV[1] now (ms); ARGV[2] change channel; ARGV[3] group; ARGV[4] service.
-- Publishes node_removed (or node_expired) per node, then service_removed
-- if the service had a record or nodes.
-- Returns { 1 if the record existed else 0, name1, envelope1, name2, ... }.
local now = tonumber(ARGV[1])
local record = redis.call('GET', KEYS[1])
local nodes = redis.call('HGETALL', KEYS[2])
redis.call('DEL', KEYS[1], KEYS[2])
for i = 1, #nodes, 2 do
  local kind = 'node_removed'
  if is_expired(nodes[i + 1], now) then
    kind = 'node_expired'
  end
  change(KEYS[3], ARGV[2], kind, ARGV[3], ARGV[4], nodes[i], nodes[i + 1], ARGV[1])
end
if record or #nodes > 0 then
  change(KEYS[3], ARGV[2], 'service_removed', ARGV[3], ARGV[4], '', record or 'null', ARGV[1])
end
local had_record = 0
if record then
  had_record = 1
end
table.insert(nodes, 1, had_record)
return nodes
