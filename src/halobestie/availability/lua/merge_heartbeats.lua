-- Seed heartbeats without moving any backwards: Valkey may hold newer pings than
-- Postgres' last_heartbeat_at (the write-back runs once per cycle).
-- KEYS[i] mitra:heartbeat:<id>  ARGV[i] ISO-8601 UTC
local written = 0
for i, key in ipairs(KEYS) do
  local current = redis.call('GET', key)
  if (not current) or current < ARGV[i] then
    redis.call('SET', key, ARGV[i])
    written = written + 1
  end
end
return written
