-- Seed: swap the sets built beside the live ones in, atomically, with the capacities
-- (a script is atomic on a single server and on a cluster node alike, where a MULTI
-- through valkey-py's cluster client is not available; every key shares one slot).
-- KEYS[1] mitras:online  KEYS[2] mitras:deactivated  KEYS[3] mitras:ranked
-- KEYS[4..6] the new online, deactivated and ranked, built by the caller with expiries
-- KEYS[7] availability:snapshot  KEYS[8..] mitra:capacity:<id>
-- ARGV[1..3] how many members the caller put in KEYS[4..6]; ARGV[4..] the capacities
-- Refuses (an error, nothing written) when a new set is not complete: it expired, or
-- its building was cut short.
local counts = {redis.call('SCARD', KEYS[4]), redis.call('SCARD', KEYS[5]),
                redis.call('ZCARD', KEYS[6])}
for i = 1, 3 do
  if counts[i] ~= tonumber(ARGV[i]) then
    return redis.error_reply('SEED_INCOMPLETE ' .. KEYS[i + 3] .. ' has ' .. counts[i]
      .. ' members, not ' .. ARGV[i])
  end
end
for i = 1, 3 do
  if counts[i] > 0 then
    redis.call('RENAME', KEYS[i + 3], KEYS[i])
    redis.call('PERSIST', KEYS[i]) -- RENAME keeps the building key's expiry
  else
    redis.call('DEL', KEYS[i])
  end
end
-- MSET in slices: unpack() of a whole 100k-mitra list would overflow Lua's stack.
local SLICE = 500
for first = 8, #KEYS, SLICE do
  local slice = {}
  for k = first, math.min(first + SLICE - 1, #KEYS) do
    slice[#slice + 1] = KEYS[k]
    slice[#slice + 1] = ARGV[k - 4]
  end
  redis.call('MSET', unpack(slice))
end
-- The beacon must not keep answering from the mirror just replaced.
redis.call('DEL', KEYS[7])
return 1
