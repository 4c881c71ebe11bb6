-- Shared by every script that changes the registry (prepended to each).
-- A change takes the next revision and is published on our change channel
-- in the same atomic step as the write, so every server's watchers see one
-- order. Names are letters, digits, '.', '_' and '-' only, and stored
-- values are JSON, so the message needs no escaping.

local function next_revision(key)
  local rev = redis.call('INCR', key)
  if rev == 1 then
    -- The counter is new: a fresh registry, or a Redis that restarted
    -- empty. Start it from the clock (microseconds), so revisions keep
    -- increasing for watchers that saw the old ones.
    local t = redis.call('TIME')
    rev = tonumber(t[1]) * 1000000 + tonumber(t[2])
    redis.call('SET', key, string.format('%.0f', rev))
  end
  return rev
end

-- change(revision key, channel, type, group, service, node, stored, now)
local function change(revkey, channel, kind, group, service, node, stored, now)
  local rev = next_revision(revkey)
  redis.call('PUBLISH', channel, '{"revision":' .. string.format('%.0f', rev)
    .. ',"time":' .. now .. ',"type":"' .. kind .. '","group":"' .. group
    .. '","service":"' .. service .. '","node":"' .. node .. '","stored":' .. stored .. '}')
end

-- The record part of a stored envelope (everything after "record":).
local function record_of(stored)
  local at = string.find(stored, '"record":', 1, true)
  return string.sub(stored, at + 9, -2)
end

-- Whether a stored node envelope's deadline has passed at now.
local function is_expired(stored, now)
  local exp = string.match(stored, '^{"registered_at":%d+,"updated_at":%d+,"expires_at":(%d+)')
  return exp ~= nil and tonumber(exp) <= now
end

-- The instance_id of a stored node envelope (the record's first field).
local function instance_of(stored)
  return string.match(stored, '"record":{"instance_id":"([^"]*)"') or ''
end
