-- Write one mitra's whole mirror state, as just read from Postgres, atomically.
-- KEYS[1] mitras:online  KEYS[2] mitras:deactivated  KEYS[3] mitra:heartbeat:<id>
-- KEYS[4] mitra:capacity:<id>
-- ARGV[1] id  ARGV[2] online 0|1  ARGV[3] active 0|1  ARGV[4] heartbeat ISO or ''
-- ARGV[5] capacity
if ARGV[3] == '1' then
  redis.call('SREM', KEYS[2], ARGV[1])
else
  redis.call('SADD', KEYS[2], ARGV[1])
end
if ARGV[2] == '1' then
  redis.call('SADD', KEYS[1], ARGV[1])
  -- Postgres' timestamp lags Valkey's by up to one write-back cycle: keep the newer.
  if ARGV[4] ~= '' then
    local current = redis.call('GET', KEYS[3])
    if (not current) or current < ARGV[4] then
      redis.call('SET', KEYS[3], ARGV[4])
    end
  end
else
  redis.call('SREM', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[3])
end
redis.call('SET', KEYS[4], ARGV[5])
return 1
