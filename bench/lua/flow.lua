-- The payment flow for wrk: POST /v1/transactions, then POST /v1/payments for the id it
-- returned (card 4242 4242 4242 4242, automatic capture), again and again.
--
-- Run with ONE connection per thread (wrk -t N -c N): wrk's Lua callbacks do not say
-- which connection a response belongs to, but with one connection per thread (each
-- thread has its own Lua state) request() and response() strictly alternate, so this
-- per-thread state machine is exactly a per-connection one, and the latency measured
-- between them is that call's latency. Latencies are recorded per call type here
-- (wrk's own histogram mixes both types) and written out by done().
--
-- Parameters come from the environment (the bench sets them):
--   BENCH_TOKENS_FILE  one access token per line; thread i uses token i mod n
--   BENCH_OUT          where done() writes the results (see bench/wrk.py for the format)
--   BENCH_NONCE        makes idempotency keys unique across runs
--   BENCH_IDEMPOTENCY  "1": send an Idempotency-Key header on every POST (as a careful
--                      merchant integration does)
--   BENCH_AMOUNT, BENCH_CURRENCY, BENCH_EXP_YEAR

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local CLOCK_MONOTONIC = 1
local function now_us()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
end

-- main state: collects the threads for done() -------------------------------------------
local threads = {}
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_index", thread_count)
  table.insert(threads, thread)
end

-- per-thread state ------------------------------------------------------------------------
lat_ct = {}     -- CreateTransaction latencies, microseconds
lat_pay = {}    -- CreatePayment latencies, microseconds
status_ct = {}  -- HTTP status -> count
status_pay = {}
flows = 0            -- payments answered 200 with status SUCCEEDED
not_succeeded = 0    -- payments answered 200 with another status
missing_id = 0       -- CreateTransaction answered 200 without a parsable id
samples = {}         -- "<call> <status>" -> the first error body (for the report)
sent = 0
answered = 0

local state = "ct"
local txn_id = nil
local started = 0
local seq = 0
local ct_headers, pay_headers, ct_body, pay_prefix, pay_suffix
local idempotency = false
local nonce = "x"

function init(args)
  local tokens = {}
  local f = assert(io.open(os.getenv("BENCH_TOKENS_FILE"), "r"))
  for line in f:lines() do
    if #line > 0 then tokens[#tokens + 1] = line end
  end
  f:close()
  local token = tokens[((thread_index or 1) - 1) % #tokens + 1]
  nonce = os.getenv("BENCH_NONCE") or tostring(os.time())
  idempotency = os.getenv("BENCH_IDEMPOTENCY") == "1"
  local amount = os.getenv("BENCH_AMOUNT") or "1999"
  local currency = os.getenv("BENCH_CURRENCY") or "USD"
  local exp_year = os.getenv("BENCH_EXP_YEAR") or "2035"
  ct_headers = {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
  }
  pay_headers = {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
  }
  ct_body = '{"amount":"' .. amount .. '","currency":"' .. currency .. '","description":"bench order"}'
  pay_prefix = '{"transactionId":"'
  pay_suffix = '","method":"PAYMENT_METHOD_TYPE_CARD","card":{"number":"4242424242424242",'
    .. '"expMonth":12,"expYear":' .. exp_year .. ',"cvc":"123"},'
    .. '"captureMode":"CAPTURE_MODE_AUTOMATIC"}'
end

local function key()
  seq = seq + 1
  return "bench-" .. nonce .. "-" .. thread_index .. "-" .. seq
end

function request()
  sent = sent + 1
  local req
  if state == "pay" then
    if idempotency then pay_headers["Idempotency-Key"] = key() end
    req = wrk.format("POST", "/v1/payments", pay_headers, pay_prefix .. txn_id .. pay_suffix)
  else
    if idempotency then ct_headers["Idempotency-Key"] = key() end
    req = wrk.format("POST", "/v1/transactions", ct_headers, ct_body)
  end
  started = now_us()
  return req
end

local function bump(t, status, call, body)
  local k = tostring(status)
  t[k] = (t[k] or 0) + 1
  if status ~= 200 then
    local key = call .. " " .. k
    if samples[key] == nil then
      samples[key] = string.sub(string.gsub(body or "", "%s+", " "), 1, 400)
    end
  end
end

function response(status, headers, body)
  local elapsed = now_us() - started
  answered = answered + 1
  if state == "ct" then
    lat_ct[#lat_ct + 1] = elapsed
    bump(status_ct, status, "create_transaction", body)
    if status == 200 then
      txn_id = string.match(body, '"id"%s*:%s*"([^"]+)"')
      if txn_id then
        state = "pay"
      else
        missing_id = missing_id + 1
      end
    end
  else
    lat_pay[#lat_pay + 1] = elapsed
    bump(status_pay, status, "create_payment", body)
    if status == 200 then
      if string.find(body, '"status"%s*:%s*"PAYMENT_STATUS_SUCCEEDED"') then
        flows = flows + 1
      else
        not_succeeded = not_succeeded + 1
      end
    end
    state = "ct"
    txn_id = nil
  end
end

-- main state: gather every thread's numbers into one file -------------------------------
local function write_counts(out, name, t)
  for k, v in pairs(t) do out:write(name, " ", k, " ", v, "\n") end
end

function done(summary, latency, requests)
  local out = assert(io.open(os.getenv("BENCH_OUT"), "w"))
  local e = summary.errors
  out:write("summary ", summary.duration, " ", summary.requests, " ", summary.bytes, " ",
    e.connect, " ", e.read, " ", e.write, " ", e.status, " ", e.timeout, "\n")
  for _, thread in ipairs(threads) do
    out:write("counters ", thread:get("flows"), " ", thread:get("not_succeeded"), " ",
      thread:get("missing_id"), " ", thread:get("sent"), " ", thread:get("answered"), "\n")
    write_counts(out, "status create_transaction", thread:get("status_ct"))
    write_counts(out, "status create_payment", thread:get("status_pay"))
    for k, v in pairs(thread:get("samples")) do out:write("sample ", k, " ", v, "\n") end
    local ct = thread:get("lat_ct")
    local pay = thread:get("lat_pay")
    local buf = {}
    for i = 1, #ct do buf[#buf + 1] = string.format("%d", ct[i]) end
    out:write("lat create_transaction ", table.concat(buf, " "), "\n")
    buf = {}
    for i = 1, #pay do buf[#buf + 1] = string.format("%d", pay[i]) end
    out:write("lat create_payment ", table.concat(buf, " "), "\n")
  end
  out:close()
end
