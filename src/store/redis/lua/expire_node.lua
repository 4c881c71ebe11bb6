-- Removes a node if its deadline has passed.
-- KEYS[1], ARGV[1..4]: where and when changes go (see prelude.lua).
-- KEYS[2] nodes hash. ARGV[5] node name.
-- Publishes node_expired with the node's last record.
-- Returns { "expired" }, { "gone" } (no such node), or { "live", deadline }
-- for a node still live: its deadline (ms), or "" for a node without TTL,
-- so the sweeper can move the hint that woke it.
local name = ARGV[5]
local old = redis.call('HGET', KEYS[2], name)
if not old then
  return { 'gone' }
end
if is_expired(old, tonumber(CHANGE.now)) then
  redis.call('HDEL', KEYS[2], name)
  publish('node_expired', name, old)
  return { 'expired' }
end
return { 'live', expires_of(old) or '' }
