-- Removes a node if its deadline has passed.
-- KEYS[1] nodes hash; ARGV[1] node name; ARGV[2] now (ms).
-- Returns { "gone" } if there is no such node, { "live" } if it has no
-- deadline or a later one, { "expired", envelope } if it was removed.
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then
  return { 'gone' }
end
local exp = string.match(old, '^{"registered_at":%d+,"updated_at":%d+,"expires_at":(%d+)')
if exp and tonumber(exp) <= tonumber(ARGV[2]) then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return { 'expired', old }
end
return { 'live' }
