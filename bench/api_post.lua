-- wrk: POST the JSON body in BENCH_BODY with the API key in BENCH_KEY (bench/delivery.py, goal 2)
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
wrk.headers["User-Agent"] = "mailroom-bench/1"
