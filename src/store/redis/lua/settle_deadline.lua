-- Settles a deadline hint the sweeper has dealt with, only if it still
-- holds the score the sweeper read (a writer that moved it since wins).
-- KEYS[1] the hint's deadlines shard; ARGV[1] member; ARGV[2] score the
-- sweeper read; ARGV[3] the node's real deadline (ms) to move the hint to,
-- or "" to drop it (node gone, expired, or without a TTL now).
-- Returns 1 if the hint was settled, else 0.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then
  return 0
end
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
end
return 1
