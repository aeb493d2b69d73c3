-- Write one mitra's whole mirror state, as just read from Postgres, atomically.
-- KEYS[1] mitras:online  KEYS[2] mitras:deactivated  KEYS[3] mitra:heartbeat:<id>
-- KEYS[4] mitra:capacity:<id>  KEYS[5] mitras:ranked
-- ARGV[1] id  ARGV[2] online 0|1  ARGV[3] active 0|1  ARGV[4] heartbeat ISO or ''
-- ARGV[5] capacity  ARGV[6] MITRA_MAX_CONCURRENT_SESSIONS
-- ARGV[7] last active (latest session start or end), epoch ms, or '' for never
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
-- The ranked index holds who may be offered (online, active, below capacity), scored
-- open sessions * 1e13 + idle-since; an idle-since already later than Postgres' (an
-- offer made since) is kept: turns never move backwards.
local BAND = 1e13
local capacity = tonumber(ARGV[5])
if ARGV[2] == '1' and ARGV[3] == '1' and capacity < tonumber(ARGV[6]) then
  local idle = tonumber(ARGV[7]) or 0
  local current = redis.call('ZSCORE', KEYS[5], ARGV[1])
  if current then
    current = tonumber(current)
    local was = current - math.floor(current / BAND) * BAND
    if was > idle then
      idle = was
    end
  end
  redis.call('ZADD', KEYS[5], string.format('%.0f', capacity * BAND + idle), ARGV[1])
else
  redis.call('ZREM', KEYS[5], ARGV[1])
end
return 1
