-- Many idle-ish keep-alive connections for wrk: every connection sends
-- GET /v1/transactions/{id} about once per BENCH_INTERVAL_MS, with a random first delay
-- so the connections do not fire in lockstep. wrk's own latency histogram is exact here
-- (one call type; the delay is not part of a request's latency).
--
-- Environment: BENCH_TARGETS_FILE (lines "<token> <transaction id>"), BENCH_INTERVAL_MS,
-- BENCH_CONNS_PER_THREAD, BENCH_OUT.

local threads = {}
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_index", thread_count)
  table.insert(threads, thread)
end

statuses = {}
samples = {}  -- status -> the first error body
sent = 0
answered = 0

local targets = {}
local interval = 1000
local first_delays = 0
local per_thread = 1

function init(args)
  local f = assert(io.open(os.getenv("BENCH_TARGETS_FILE"), "r"))
  for line in f:lines() do
    local token, id = string.match(line, "^(%S+)%s+(%S+)$")
    if token then
      targets[#targets + 1] = {
        path = "/v1/transactions/" .. id,
        headers = { ["Authorization"] = "Bearer " .. token },
      }
    end
  end
  f:close()
  interval = tonumber(os.getenv("BENCH_INTERVAL_MS") or "1000")
  per_thread = tonumber(os.getenv("BENCH_CONNS_PER_THREAD") or "1")
  math.randomseed(os.time() + (thread_index or 1) * 7919)
end

function delay()
  -- The first delay of each connection spreads the start over one interval.
  if first_delays < per_thread then
    first_delays = first_delays + 1
    return math.random(0, interval)
  end
  return math.floor(interval * (0.9 + 0.2 * math.random()))
end

function request()
  sent = sent + 1
  local t = targets[math.random(1, #targets)]
  return wrk.format("GET", t.path, t.headers, nil)
end

function response(status, headers, body)
  answered = answered + 1
  local k = tostring(status)
  statuses[k] = (statuses[k] or 0) + 1
  if status ~= 200 and samples[k] == nil then
    samples[k] = string.sub(string.gsub(body or "", "%s+", " "), 1, 400)
  end
end

function done(summary, latency, requests)
  local out = assert(io.open(os.getenv("BENCH_OUT"), "w"))
  local e = summary.errors
  out:write("summary ", summary.duration, " ", summary.requests, " ", summary.bytes, " ",
    e.connect, " ", e.read, " ", e.write, " ", e.status, " ", e.timeout, "\n")
  out:write("latency ", latency.min, " ", latency.max, " ", latency.mean, " ",
    latency:percentile(50), " ", latency:percentile(95), " ", latency:percentile(99), " ",
    latency:percentile(99.9), "\n")
  for _, thread in ipairs(threads) do
    out:write("counters ", thread:get("sent"), " ", thread:get("answered"), "\n")
    for k, v in pairs(thread:get("statuses")) do
      out:write("status ", k, " ", v, "\n")
    end
    for k, v in pairs(thread:get("samples")) do
      out:write("sample ", k, " ", v, "\n")
    end
  end
  out:close()
end
