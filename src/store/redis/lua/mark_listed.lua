-- Marks a service as listed, once a registration has listed it and
-- written its records, so later writes skip the listing. Only if it still
-- has records: a removal in between leaves no mark.
-- KEYS[1] service key; KEYS[2] nodes hash; KEYS[3] the listed mark.
-- Returns 1 if marked, else 0.
if redis.call('EXISTS', KEYS[1], KEYS[2]) == 0 then
  return 0
end
redis.call('SET', KEYS[3], '1')
return 1
