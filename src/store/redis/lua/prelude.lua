-- Shared by every script that changes the registry (prepended to each,
-- after record.lua). A change takes its service's next revision and is
-- published on our change channel in the same atomic step as the write, so
-- every server's watchers see one order of each service's changes. Names are letters, digits, '.', '_' and
-- '-' only, and stored values are JSON, so the message needs no escaping.
--
-- Where and when the changes go comes first in every such script, at
-- fixed positions (pushed by `change_call` in scripts/mod.rs), and is read
-- here only: KEYS[1] the service's revision; ARGV[1] now (ms); ARGV[2] change
-- channel; ARGV[3] group; ARGV[4] service. A script's own KEYS start at
-- KEYS[2], its own ARGV at ARGV[5].
local CHANGE = {
  revision = KEYS[1],
  now = ARGV[1],
  channel = ARGV[2],
  group = ARGV[3],
  service = ARGV[4],
}

-- The service's next revision: past its stored one, and never behind the
-- clock (microseconds), so revisions of different services are ordered
-- as their times are, within clock skew (a hybrid logical clock). A
-- failover that lost the last writes, or a Redis that restarted empty,
-- rolls the stored revision back; taking the clock as a floor keeps
-- revisions above every one already handed out, because a failover takes
-- longer than the clocks of the nodes drift apart.
local function next_revision()
  local stored = tonumber(redis.call('GET', CHANGE.revision) or '0') or 0
  local t = redis.call('TIME')
  local rev = math.max(stored + 1, tonumber(t[1]) * 1000000 + tonumber(t[2]))
  redis.call('SET', CHANGE.revision, string.format('%.0f', rev))
  return rev
end

-- A stored service envelope with auth_credentials blanked. The change
-- channel is readable by every client allowed to SUBSCRIBE, and watchers
-- never get credentials anyway, so they never leave Redis this way. serde
-- writes the field as `"auth_credentials":"<JSON string>"` (the literal is
-- CREDENTIALS_FIELD of record.rs); inside a JSON string every quote is
-- escaped, so the value ends at the first quote not taken by a backslash
-- escape. An earlier field cannot hold the literal: its quotes would be
-- escaped.
local function without_credentials(stored)
  local _, open = string.find(stored, CREDENTIALS_FIELD, 1, true)
  if not open then
    return stored
  end
  local at = open + 1
  while true do
    local c = string.find(stored, '[\\"]', at)
    if not c then
      -- Unreachable for what serde writes; never publish the rest.
      return 'null'
    end
    if string.sub(stored, c, c) == '"' then
      return string.sub(stored, 1, open) .. string.sub(stored, c)
    end
    at = c + 2
  end
end

-- Publishes a change: kind is a `ChangeKind` of changes.rs, node the
-- node's name ('' for the service itself), stored the envelope the change
-- carries (the last one, for a removal). A service's envelope goes out
-- without its credentials (the one place every service change passes).
local function publish(kind, node, stored)
  if node == '' then
    stored = without_credentials(stored)
  end
  local rev = next_revision()
  redis.call('PUBLISH', CHANGE.channel, '{"revision":' .. string.format('%.0f', rev)
    .. ',"time":' .. CHANGE.now .. ',"type":"' .. kind .. '","group":"' .. CHANGE.group
    .. '","service":"' .. CHANGE.service .. '","node":"' .. node .. '","stored":' .. stored .. '}')
end
