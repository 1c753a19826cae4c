-- wrk script for bench/serve_bench.py: every request a different login, so
-- every request misses the route cache and queries MariaDB.
-- Logins run from user<START> upwards; past user<END - 1> they start again
-- (serve_bench.py reports how many requests really missed).
local first = tonumber(os.getenv("AUTHSVC_BENCH_START") or "0")
local last = tonumber(os.getenv("AUTHSVC_BENCH_END") or "100000") - 1
local n = first - 1

request = function()
  n = n + 1
  if n > last then
    n = first
  end
  wrk.headers["Auth-User"] = "user" .. n
  return wrk.format()
end
