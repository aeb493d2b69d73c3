-- Heartbeat guard and write in one round trip (the hot path: no Postgres).
-- KEYS[1] mitras:deactivated  KEYS[2] mitras:online  KEYS[3] mitra:heartbeat:<id>
-- ARGV[1] mitra id  ARGV[2] now, fixed-width ISO-8601 UTC (string order = time order)
-- Returns -1 deactivated, 0 not online, 1 recorded.
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then
  return -1
end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then
  return 0
end
-- Never move a heartbeat backwards (two instances, clock skew, a late reseed).
local current = redis.call('GET', KEYS[3])
if (not current) or current < ARGV[2] then
  redis.call('SET', KEYS[3], ARGV[2])
end
return 1
