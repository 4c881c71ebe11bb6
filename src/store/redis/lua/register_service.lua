-- Writes a service record whole, keeping registered_at of an existing one.
-- KEYS[1], ARGV[1..4]: where and when changes go (see prelude.lua).
-- KEYS[2] service key; KEYS[3] the service's listed mark. ARGV[5] record
-- JSON; ARGV[6] "1" to write even when the service is not known to be
-- listed (the caller listed it just before).
-- Publishes service_registered, or service_updated if the record changed.
-- Returns { "stored", envelope }, or { "unlisted" } when the service must
-- be listed first (nothing changes).
if ARGV[6] ~= '1' and redis.call('EXISTS', KEYS[3]) == 0 then
  return { 'unlisted' }
end
local record = ARGV[5]
local old = redis.call('GET', KEYS[2])
local registered = CHANGE.now
local kind = 'service_registered'
if old then
  registered = registered_of(old) or registered
  if record_of(old) == record then
    kind = nil
  else
    kind = 'service_updated'
  end
end
local stored = service_envelope(registered, CHANGE.now, record)
redis.call('SET', KEYS[2], stored)
if kind then
  publish(kind, '', stored)
end
return { 'stored', stored }
