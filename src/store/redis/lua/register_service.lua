-- Writes a service record whole, keeping registered_at of an existing one.
-- KEYS[1] service key; ARGV[1] record JSON; ARGV[2] now (ms).
-- Returns the stored envelope.
local old = redis.call('GET', KEYS[1])
local registered = ARGV[2]
if old then
  registered = string.match(old, '^{"registered_at":(%d+)') or registered
end
local stored = '{"registered_at":' .. registered .. ',"updated_at":' .. ARGV[2]
  .. ',"record":' .. ARGV[1] .. '}'
redis.call('SET', KEYS[1], stored)
return stored
