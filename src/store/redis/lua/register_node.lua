-- Writes a node record whole, keeping registered_at of an existing live one.
-- KEYS[1], ARGV[1..4]: where and when changes go (see prelude.lua).
-- KEYS[2] nodes hash.
-- ARGV[5] node name; ARGV[6] record JSON; ARGV[7] expires_at (ms), or ""
-- for no TTL; ARGV[8] "1" to keep a live node's instance_id (the request
-- named none; the record then carries a fresh one to use for a new node).
-- Publishes node_added, or node_updated if a field of a live node's record
-- changed (timestamps and the deadline do not count); an old record past
-- its deadline is published as node_expired first.
-- Returns the stored envelope.
local name = ARGV[5]
local record = ARGV[6]
local registered = CHANGE.now
local kind = 'node_added'
local old = redis.call('HGET', KEYS[2], name)
if old then
  if is_expired(old, tonumber(CHANGE.now)) then
    publish('node_expired', name, old)
  else
    registered = registered_of(old) or registered
    if ARGV[8] == '1' then
      record = with_instance(record, instance_of(old))
    end
    if record_of(old) == record then
      kind = nil
    else
      kind = 'node_updated'
    end
  end
end
local stored = node_envelope(registered, CHANGE.now, ARGV[7], record)
redis.call('HSET', KEYS[2], name, stored)
if kind then
  publish(kind, name, stored)
end
return stored
