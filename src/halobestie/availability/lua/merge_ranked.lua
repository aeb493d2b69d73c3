-- Seed: fill a new ranked index from Postgres' scores without moving anyone's turn
-- backwards: a live score in the same load band with a later idle-since (an offer made
-- since the last session change) is kept. swap_in.lua then RENAMEs KEYS[2] over KEYS[1]
-- and PERSISTs it (RENAME keeps the 10-minute expiry set below).
-- KEYS[1] mitras:ranked (live)  KEYS[2] the new index being built
-- ARGV[2i-1] mitra id  ARGV[2i] score from Postgres (open sessions * 1e13 + epoch ms)
local BAND = 1e13
for i = 1, #ARGV, 2 do
  local id, score = ARGV[i], tonumber(ARGV[i + 1])
  local live = redis.call('ZSCORE', KEYS[1], id)
  if live then
    live = tonumber(live)
    if math.floor(live / BAND) == math.floor(score / BAND) and live > score then
      score = live
    end
  end
  redis.call('ZADD', KEYS[2], string.format('%.0f', score), id)
end
-- A seed killed before its swap must not leave this key behind: it expires unless the
-- swap (RENAME, then PERSIST, in swap_in.lua) makes it the live index.
redis.call('EXPIRE', KEYS[2], 600)
return #ARGV / 2
