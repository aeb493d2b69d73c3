-- wrk script for the benchmarks: cycles through pre-built requests and prints a JSON
-- summary line (prefixed WRK_JSON) that benchmarks/loadgen.py parses.
--
-- Arguments (after `--`): METHOD [IDS_AND_TOKENS_FILE]
--   without a file: every request is METHOD on the URL's path, no extra headers;
--   with a file: one "<mitra id> <access token>" per line; request i carries
--   "Authorization: Bearer <token i>" and "X-Mitra-Id: <id i>" (the bare-Starlette floor
--   reads the id from that header; the real app ignores it).

local built = {}
local index = 0

function init(args)
  local method = args[1] or "GET"
  local file = args[2]
  if file then
    for line in io.lines(file) do
      local id, token = line:match("^(%S+)%s+(%S+)$")
      if id then
        built[#built + 1] = wrk.format(method, nil, {
          ["Authorization"] = "Bearer " .. token,
          ["X-Mitra-Id"] = id,
          ["Content-Length"] = "0",
        }, nil)
      end
    end
  else
    built[1] = wrk.format(method, nil, nil, nil)
  end
  -- Each wrk thread starts at a different place in the list.
  index = math.random(#built) - 1
end

function request()
  index = index % #built + 1
  return built[index]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "status_errors": %d, '
      .. '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, '
      .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "mean_us": %.1f, "max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.status,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
