-- wrk script: count which gunicorn worker served each answer (bench/run.py, goal 4).
-- Asks bench/app.py for its X-Worker-Pid header (X-Bench-Pid: 1); the other headers
-- (cookie, user agent) come from wrk's -H. At the end prints one line per worker:
--   pid <pid> <answers>
-- A response() function makes wrk hand every answer to Lua, which slows wrk down: use
-- this script for the spread over workers only, never for the figures that are compared.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  wrk.headers["X-Bench-Pid"] = "1"
  counts = {}
end

function response(status, headers, body)
  local pid = headers["X-Worker-Pid"] or "none"
  counts[pid] = (counts[pid] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for pid, n in pairs(thread:get("counts")) do
      total[pid] = (total[pid] or 0) + n
    end
  end
  for pid, n in pairs(total) do
    io.write(string.format("pid %s %d\n", pid, n))
  end
end
