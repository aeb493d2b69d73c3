-- The pairing blast: pick the best-ranked fresh mitras from the ranked index and take
-- their turn, atomically (two requests running at once never draw the same mitras while
-- others are waiting for a turn).
-- KEYS[1] mitras:ranked (score = open sessions * 1e13 + idle-since, epoch ms)
-- ARGV[1] heartbeat key prefix ('mitra:heartbeat:' with VALKEY_KEY_PREFIX)
-- ARGV[2] freshness cutoff: a heartbeat must be greater (fixed-width ISO strings)
-- ARGV[3] fanout  ARGV[4] window: candidates kept at most for the draw among ties
-- ARGV[5] walk limit: index entries looked at, at most (stale heartbeats are skipped)
-- ARGV[6] now, epoch ms  ARGV[7] random seed, 1 .. 2^31 - 2  ARGV[8..] excluded ids
-- Returns {id, load, id, load, ...} in offer order; each returned mitra's score moves to
-- `now` within its load band (an offer is a turn: the next request goes to the next).
-- Silent mitras met on the way lose their turn too. Cost: O(fanout + skipped) index
-- entries, never O(pool).
local BAND = 1e13
local fanout = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local limit = tonumber(ARGV[5])
local now = tonumber(ARGV[6])
local state = tonumber(ARGV[7])
local excluded = {}
for i = 8, #ARGV do
  excluded[ARGV[i]] = true
end

local ids, scores = {}, {}
local stale, stale_scores = {}, {}
local boundary = nil
local walked, pos, page = 0, 0, 64
local done = false
while not done and walked < limit and fanout > 0 do
  local batch = redis.call('ZRANGE', KEYS[1], pos, pos + page - 1, 'WITHSCORES')
  if #batch == 0 then
    break
  end
  pos = pos + page
  for i = 1, #batch, 2 do
    local id, score = batch[i], tonumber(batch[i + 1])
    -- Past the ties of the last place, or the window full: the draw has what it needs.
    if boundary and (score ~= boundary or #ids >= window) then
      done = true
      break
    end
    walked = walked + 1
    if not excluded[id] then
      local seen = redis.call('GET', ARGV[1] .. id)
      if seen and seen > ARGV[2] then
        ids[#ids + 1] = id
        scores[#scores + 1] = score
        if #ids == fanout then
          boundary = score
        end
      else
        -- Silent (not yet swept offline): it loses this turn, so the next request does
        -- not walk past it again. A mitra that pings again keeps its place in the pool.
        stale[#stale + 1] = id
        stale_scores[#stale_scores + 1] = score
      end
    end
    if walked >= limit then
      done = true
      break
    end
  end
end

-- Random order among equal scores, and only among them (Park-Miller, seeded by the
-- caller: scripts must not draw their own randomness).
local function draw(n)
  state = (state * 16807) % 2147483647
  return state % n
end
local i = 1
while i <= #ids do
  local j = i
  while j < #ids and scores[j + 1] == scores[i] do
    j = j + 1
  end
  for k = j, i + 1, -1 do
    local r = i + draw(k - i + 1)
    ids[k], ids[r] = ids[r], ids[k]
  end
  i = j + 1
end

local function take_turn(id, score)
  local load = math.floor(score / BAND)
  if now > score - load * BAND then
    redis.call('ZADD', KEYS[1], 'XX', string.format('%.0f', load * BAND + now), id)
  end
  return load
end
for n = 1, #stale do
  take_turn(stale[n], stale_scores[n])
end

local out = {}
for n = 1, math.min(fanout, #ids) do
  out[#out + 1] = ids[n]
  out[#out + 1] = tostring(take_turn(ids[n], scores[n]))
end
return out
