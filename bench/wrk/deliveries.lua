-- wrk script: POST pre-signed Twilio Event Streams deliveries, each one once, in order.
--
--   [BENCH_DELAY_MS=N] wrk -t1 -c32 -d8s -s bench/wrk/deliveries.lua http://127.0.0.1:PORT -- FILE
--
-- FILE holds three lines per delivery: the path with its bodySHA256 query, the
-- X-Twilio-Signature, the JSON body (one line). Signing happens before the run, so wrk
-- measures the server, not the signer. Every delivery names new message SIDs, so each is
-- an external capture; past the end of the file wrk starts over (the runner reports it).
--
-- BENCH_DELAY_MS paces each connection (wrk's delay() hook): offered rate is about
-- connections * 1000 / (BENCH_DELAY_MS + latency). This is closed-loop, unlike wrk2: a stalled
-- server also slows the sender, so tail latencies are a lower bound.

local deliveries = {}
local index = 0
local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "0")

function init(args)
  local lines = {}
  for line in io.lines(args[1]) do
    lines[#lines + 1] = line
  end
  for i = 1, #lines - 2, 3 do
    deliveries[#deliveries + 1] = wrk.format("POST", lines[i], {
      ["Content-Type"] = "application/json",
      ["X-Twilio-Signature"] = lines[i + 1],
    }, lines[i + 2])
  end
end

function request()
  index = index + 1
  if index > #deliveries then
    index = 1
  end
  return deliveries[index]
end

if pause > 0 then
  function delay()
    return pause
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "connect_errors": %d, ' ..
    '"read_errors": %d, "write_errors": %d, "non_2xx": %d, "timeouts": %d, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
