-- Gives a live node a new deadline without writing its record or
-- publishing a change (so it gets record.lua but not prelude.lua).
-- KEYS[1] nodes hash. ARGV[1] node name; ARGV[2] now (ms); ARGV[3] new
-- expires_at (ms), or "" for none; ARGV[4] instance_id that must match,
-- or "". ARGV[5] the caller's name as a JSON string, or "" without auth;
-- ARGV[6] "1" when the caller may renew nodes others registered.
-- Returns { "renewed" }, { "missing" } (none, or past its deadline),
-- { "owned", owner } or { "other", instance }.
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old or is_expired(old, tonumber(ARGV[2])) then
  return { 'missing' }
end
if not may_change(old, ARGV[5], ARGV[6]) then
  return { 'owned', owner_of(old) }
end
if ARGV[4] ~= '' and instance_of(old) ~= ARGV[4] then
  return { 'other', instance_of(old) }
end
local registered, updated = times_of(old)
redis.call('HSET', KEYS[1], ARGV[1], node_envelope(registered, updated, ARGV[3], owner_of(old), record_of(old)))
return { 'renewed' }
