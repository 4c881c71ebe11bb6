-- Writes a node record whole, keeping registered_at of an existing live one.
-- KEYS[1] nodes hash; ARGV[1] node name; ARGV[2] record JSON; ARGV[3] now
-- (ms); ARGV[4] expires_at (ms), or "" for no TTL.
-- Returns the stored envelope.
local now = tonumber(ARGV[3])
local registered = ARGV[3]
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local reg, exp = string.match(old, '^{"registered_at":(%d+),"updated_at":%d+,"expires_at":(%w+)')
  if reg and (exp == 'null' or tonumber(exp) > now) then
    registered = reg
  end
end
local expires = 'null'
if ARGV[4] ~= '' then
  expires = ARGV[4]
end
local stored = '{"registered_at":' .. registered .. ',"updated_at":' .. ARGV[3]
  .. ',"expires_at":' .. expires .. ',"record":' .. ARGV[2] .. '}'
redis.call('HSET', KEYS[1], ARGV[1], stored)
return stored
