-- Writes a node record whole, keeping registered_at of an existing live one.
-- KEYS[1], ARGV[1..4]: where and when changes go (see prelude.lua).
-- KEYS[2] nodes hash; KEYS[3] the service's listed mark.
-- ARGV[5] node name; ARGV[6] record JSON; ARGV[7] expires_at (ms), or ""
-- for no TTL; ARGV[8] "1" to keep a live node's instance_id (the request
-- named none; the record then carries a fresh one to use for a new node).
-- ARGV[9] the caller's name as a JSON string, the node's owner from now
-- on, or "" without auth; ARGV[10] "1" when the caller may change nodes
-- others registered (admin). ARGV[11] "1" to write even when the service
-- is not known to be listed (the caller listed it just before).
-- Publishes node_added, or node_updated if a field of a live node's record
-- changed (timestamps and the deadline do not count); an old record past
-- its deadline is published as node_expired first.
-- Returns { "stored", envelope, changed }, changed "1" when the record
-- or the owner differs from the live node's (a plain renewal is ""),
-- { "owned", owner } when a live node was registered by another identity,
-- or { "unlisted" } when the service must be listed first (nothing
-- changes either way).
if ARGV[11] ~= '1' and redis.call('EXISTS', KEYS[3]) == 0 then
  return { 'unlisted' }
end
local name = ARGV[5]
local record = ARGV[6]
local owner = nil
if ARGV[9] ~= '' then
  owner = ARGV[9]
end
local registered = CHANGE.now
local kind = 'node_added'
local changed = '1'
local old = redis.call('HGET', KEYS[2], name)
if old then
  if is_expired(old, tonumber(CHANGE.now)) then
    publish('node_expired', name, old)
  else
    if not may_change(old, ARGV[9], ARGV[10]) then
      return { 'owned', owner_of(old) }
    end
    -- Without auth a node keeps the owner it had.
    owner = owner or owner_of(old)
    registered = registered_of(old) or registered
    if ARGV[8] == '1' then
      record = with_instance(record, instance_of(old))
    end
    if record_of(old) == record then
      kind = nil
      if owner == owner_of(old) then
        changed = ''
      end
    else
      kind = 'node_updated'
    end
  end
end
local stored = node_envelope(registered, CHANGE.now, ARGV[7], owner, record)
redis.call('HSET', KEYS[2], name, stored)
if kind then
  publish(kind, name, stored)
end
return { 'stored', stored, changed }
