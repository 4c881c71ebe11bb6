-- Lists a service and its group, and notes the registration that is
-- about to write the service's first records (see listing_remove.lua).
-- KEYS[1] groups; KEYS[2] the group's services; KEYS[3] pending
-- registrations. ARGV[1] group; ARGV[2] service; ARGV[3] the
-- registration's pending member; ARGV[4] now (ms).
redis.call('ZADD', KEYS[1], 0, ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
return redis.call('ZADD', KEYS[2], 0, ARGV[2])
