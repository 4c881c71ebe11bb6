-- Reads and writes stored envelopes without a JSON parser, by position
-- (the layout is named in src/store/redis/record.rs). Prepended to every
-- script that reads records; NODE_RECORD_HEAD, the literal every node
-- record starts with, is defined just above it from record.rs.

-- The record part of a stored envelope (everything after "record":).
local function record_of(stored)
  local at = string.find(stored, '"record":', 1, true)
  return string.sub(stored, at + 9, -2)
end

-- registered_at and updated_at of a stored envelope, as written.
local function times_of(stored)
  return string.match(stored, '^{"registered_at":(%d+),"updated_at":(%d+),')
end

-- registered_at of a stored envelope, as written.
local function registered_of(stored)
  return string.match(stored, '^{"registered_at":(%d+)')
end

-- The deadline of a stored node envelope as written (ms), or nil for none.
local function expires_of(stored)
  return string.match(stored, '^{"registered_at":%d+,"updated_at":%d+,"expires_at":(%d+)')
end

-- Whether a stored node envelope's deadline has passed at now.
local function is_expired(stored, now)
  local exp = expires_of(stored)
  return exp ~= nil and tonumber(exp) <= now
end

-- Ids never contain a quote, so the id ends at the next one.
local INSTANCE_PATTERN = '"record":' .. string.gsub(NODE_RECORD_HEAD, '%p', '%%%0') .. '([^"]*)"'

-- The instance_id of a stored node envelope.
local function instance_of(stored)
  return string.match(stored, INSTANCE_PATTERN) or ''
end

-- A node record (not an envelope) with its instance_id replaced by id.
local function with_instance(record, id)
  local close = string.find(record, '"', #NODE_RECORD_HEAD + 1, true)
  return NODE_RECORD_HEAD .. id .. string.sub(record, close)
end

-- The owner of a stored node envelope as the JSON string it is stored as
-- (quotes included), or nil for a node registered without auth. It sits
-- between expires_at and the record, so nothing in a record can match.
local OWNER_PATTERN = '^{"registered_at":%d+,"updated_at":%d+,"expires_at":[%dnul]+,"owner":(".-"),"record":'

local function owner_of(stored)
  return string.match(stored, OWNER_PATTERN)
end

-- Whether a caller may change the live node stored as old: caller is its
-- name as a JSON string ('' without auth: no check), admin is '1' for a
-- caller that may change any node. Mirrors model::Actor::may_change.
local function may_change(old, caller, admin)
  if caller == '' or admin == '1' then
    return true
  end
  local owner = owner_of(old)
  return owner == nil or owner == caller
end

-- The envelope of a node record; expires is '' for a node without TTL,
-- owner a JSON string or nil for none.
local function node_envelope(registered, updated, expires, owner, record)
  if expires == '' then
    expires = 'null'
  end
  local owned = ''
  if owner then
    owned = ',"owner":' .. owner
  end
  return '{"registered_at":' .. registered .. ',"updated_at":' .. updated
    .. ',"expires_at":' .. expires .. owned .. ',"record":' .. record .. '}'
end

-- The envelope of a service record.
local function service_envelope(registered, updated, record)
  return '{"registered_at":' .. registered .. ',"updated_at":' .. updated
    .. ',"record":' .. record .. '}'
end
