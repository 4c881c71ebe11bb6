-- Reads a service's revision and nodes in one atomic step, so a watcher
-- can start from a consistent state of that service.
-- KEYS[1] the service's revision; KEYS[2] its nodes hash.
-- Returns { revision, HGETALL of KEYS[2] }.
--
-- The revision is the stored one, or just below the clock (µs) if that is
-- higher: every later change is above it either way (a change takes
-- max(stored + 1, clock)), and after a failover that lost writes the
-- stored revision may be below revisions the lost writes handed out,
-- which watchers have seen; the clock is past those.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local stored = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local revision = string.format('%.0f', math.max(stored, now - 1))
return { revision, redis.call('HGETALL', KEYS[2]) }
