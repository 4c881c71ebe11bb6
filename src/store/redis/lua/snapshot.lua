-- Reads the revision, a group's service listing and some services' nodes
-- in one atomic step, so a watcher can start from a consistent state.
-- KEYS[1] revision counter; KEYS[2] the group's services listing;
-- KEYS[3..] nodes hashes.
-- Returns { revision, listing, HGETALL of KEYS[3], HGETALL of KEYS[4], ... }.
local out = { redis.call('GET', KEYS[1]) or '0', redis.call('ZRANGE', KEYS[2], 0, -1) }
for i = 3, #KEYS do
  table.insert(out, redis.call('HGETALL', KEYS[i]))
end
return out
