-- wrk script for the authproxy benchmark.
--   BENCH_FORWARD=host  send absolute-form targets (GET http://host/path HTTP/1.1) with Host: host,
--                       as `curl -x` does; otherwise origin-form.
-- done() prints one machine-readable line: BENCH_RESULT {json}. Non-2xx are counted by wrk itself
-- (errors.status counts statuses > 399; the backend never answers 3xx). No response() hook, so wrk
-- does not parse headers per response.
local fwd = os.getenv("BENCH_FORWARD")
if fwd and fwd ~= "" then
  wrk.path = "http://" .. fwd .. wrk.path
  wrk.headers["Host"] = fwd
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"p999_us": %d, "mean_us": %.1f, "max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.max))
end

-- BENCH_STATUS=1: also count every status and keep the first non-2xx response (costs wrk CPU:
-- wrk then parses every response; for diagnosis, not for the measured runs).
if os.getenv("BENCH_STATUS") == "1" then
  local threads = {}
  function setup(thread)
    table.insert(threads, thread)
  end
  statuses = {}
  first_bad = nil
  function response(status, headers, body)
    statuses[status] = (statuses[status] or 0) + 1
    if (status < 200 or status > 299) and not first_bad then
      local h = {}
      for k, v in pairs(headers) do table.insert(h, k .. ": " .. v) end
      first_bad = status .. " | " .. table.concat(h, " | ") .. " | " .. (body or "")
    end
  end
  local report = done
  function done(summary, latency, requests)
    report(summary, latency, requests)
    for _, t in ipairs(threads) do
      local st = t:get("statuses")
      for k, v in pairs(st) do io.write(string.format("BENCH_STATUS %d %d\n", k, v)) end
      local fb = t:get("first_bad")
      if fb then io.write("BENCH_FIRST_BAD " .. fb .. "\n") end
    end
  end
end
