-- Removes a service's record and all its nodes.
-- KEYS[1] service key; KEYS[2] nodes hash.
-- Returns { 1 if the record existed else 0, name1, envelope1, name2, ... }.
local had_record = redis.call('EXISTS', KEYS[1])
local nodes = redis.call('HGETALL', KEYS[2])
redis.call('DEL', KEYS[1], KEYS[2])
table.insert(nodes, 1, had_record)
return nodes
