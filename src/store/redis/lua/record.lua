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

-- Whether a stored node envelope's deadline has passed at now.
local function is_expired(stored, now)
  local exp = string.match(stored, '^{"registered_at":%d+,"updated_at":%d+,"expires_at":(%d+)')
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

-- The envelope of a node record; expires is '' for a node without TTL.
local function node_envelope(registered, updated, expires, record)
  if expires == '' then
    expires = 'null'
  end
  return '{"registered_at":' .. registered .. ',"updated_at":' .. updated
    .. ',"expires_at":' .. expires .. ',"record":' .. record .. '}'
end

-- The envelope of a service record.
local function service_envelope(registered, updated, record)
  return '{"registered_at":' .. registered .. ',"updated_at":' .. updated
    .. ',"record":' .. record .. '}'
end
