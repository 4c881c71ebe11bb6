-- Writes a node record whole, keeping registered_at of an existing live one.
-- KEYS[1] nodes hash; KEYS[2] revision counter.
-- ARGV[1] node name; ARGV[2] record JSON; ARGV[3] now (ms); ARGV[4]
-- expires_at (ms), or "" for no TTL; ARGV[5] change channel; ARGV[6]
-- group; ARGV[7] service; ARGV[8] "1" to keep a live node's instance_id
-- (the request named none; the record then carries a fresh one to use for
-- a new node).
-- Publishes node_added, or node_updated if a field of a live node's record
-- changed (timestamps and the deadline do not count); an old record past
-- its deadline is published as node_expired first.
-- Returns the stored envelope.
local now = tonumber(ARGV[3])
local record = ARGV[2]
local registered = ARGV[3]
local kind = 'node_added'
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  if is_expired(old, now) then
    change(KEYS[2], ARGV[5], 'node_expired', ARGV[6], ARGV[7], ARGV[1], old, ARGV[3])
  else
    registered = string.match(old, '^{"registered_at":(%d+)') or registered
    if ARGV[8] == '1' then
      -- Swap the fresh id for the node's own: instance_id is the record's
      -- first field, and ids never contain a quote.
      local close = string.find(record, '"', 17, true)
      record = '{"instance_id":"' .. instance_of(old) .. string.sub(record, close)
    end
    if record_of(old) == record then
      kind = nil
    else
      kind = 'node_updated'
    end
  end
end
local expires = 'null'
if ARGV[4] ~= '' then
  expires = ARGV[4]
end
local stored = '{"registered_at":' .. registered .. ',"updated_at":' .. ARGV[3]
  .. ',"expires_at":' .. expires .. ',"record":' .. record .. '}'
redis.call('HSET', KEYS[1], ARGV[1], stored)
if kind then
  change(KEYS[2], ARGV[5], kind, ARGV[6], ARGV[7], ARGV[1], stored, ARGV[3])
end
return stored
