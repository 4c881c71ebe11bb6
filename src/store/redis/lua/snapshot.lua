-- Reads the revision, a group's service listing and some services' nodes
-- in one atomic step, so a watcher can start from a consistent state.
-- KEYS[1] revision counter; KEYS[2] the group's services listing;
-- KEYS[3..] nodes hashes.
-- Returns { revision, listing, HGETALL of KEYS[3], HGETALL of KEYS[4], ... }.
--
-- The revision is the stored one, or just below the clock (µs) if that is
-- higher: every later change is above it either way (a change takes
-- max(stored + 1, clock)), and after a failover that lost writes the
-- stored counter may be below revisions the lost writes handed out, which
-- watchers have seen; the clock is past those.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local stored = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local revision = string.format('%.0f', math.max(stored, now - 1))
local out = { revision, redis.call('ZRANGE', KEYS[2], 0, -1) }
for i = 3, #KEYS do
  table.insert(out, redis.call('HGETALL', KEYS[i]))
end
return out
