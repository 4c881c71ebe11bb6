-- Lists a service and its group. KEYS[1] groups; KEYS[2] the group's
-- services; ARGV[1] group; ARGV[2] service.
redis.call('ZADD', KEYS[1], 0, ARGV[1])
return redis.call('ZADD', KEYS[2], 0, ARGV[2])
