-- wrk script: the htmx section swap, POST /p/<slug>/servers/<id>/section/tls, as the
-- browser sends it when the Security select changes. bench/run.py sets the environment:
--   BENCH_BODY    form-encoded server form fields (hx-include="closest form")
--   BENCH_COOKIE  "session=..." of a signed-in admin
--   BENCH_CSRF    the CSRF token (the page's hx-headers send it as X-CSRFToken)
--   BENCH_UA      the User-Agent the session was signed in with
local function need(name)
  local value = os.getenv(name)
  if value == nil or value == "" then error(name .. " is not set") end
  return value
end

wrk.method = "POST"
wrk.body = need("BENCH_BODY")
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Cookie"] = need("BENCH_COOKIE")
wrk.headers["X-CSRFToken"] = need("BENCH_CSRF")
wrk.headers["User-Agent"] = need("BENCH_UA")
wrk.headers["HX-Request"] = "true"
wrk.headers["HX-Trigger"] = "security"
wrk.headers["HX-Trigger-Name"] = "security"
wrk.headers["HX-Target"] = "port-group"
