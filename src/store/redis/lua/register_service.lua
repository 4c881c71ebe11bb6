-- Writes a service record whole, keeping registered_at of an existing one.
-- KEYS[1] service key; KEYS[2] revision counter.
-- ARGV[1] record JSON; ARGV[2] now (ms); ARGV[3] change channel;
-- ARGV[4] group; ARGV[5] service.
-- Publishes service_registered, or service_updated if the record changed.
-- Returns the stored envelope.
local old = redis.call('GET', KEYS[1])
local registered = ARGV[2]
local kind = 'service_registered'
if old then
  registered = string.match(old, '^{"registered_at":(%d+)') or registered
  if record_of(old) == ARGV[1] then
    kind = nil
  else
    kind = 'service_updated'
  end
end
local stored = '{"registered_at":' .. registered .. ',"updated_at":' .. ARGV[2]
  .. ',"record":' .. ARGV[1] .. '}'
redis.call('SET', KEYS[1], stored)
if kind then
  change(KEYS[2], ARGV[3], kind, ARGV[4], ARGV[5], '', stored, ARGV[2])
end
return stored
