-- Drops a deadline entry only if it still holds the score the sweeper saw,
-- so a renewal that raced the sweep keeps its new deadline.
-- KEYS[1] deadlines; ARGV[1] member; ARGV[2] score the sweeper read.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
