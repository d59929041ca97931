-- Closed-loop POSTs with a unique sentence per request (cache-cold). Body template from the environment:
--   WRK_BODY  JSON with the placeholder {TEXT}, e.g. a KServe v2 infer body or an OpenAI embeddings body
--   WRK_AUTH  optional bearer token
--   WRK_SALT  optional word added to every sentence, so that sentences are unique across runs too
-- Percentiles are printed as one JSON line prefixed with WRKJSON so the caller can parse them.
local counter = 0
local thread_id = 0
local threads = {}
local words = {"model", "serving", "batch", "latency", "vector", "token", "gateway", "queue", "cache", "triton"}

function setup(thread)
  thread:set("thread_id", #threads)
  table.insert(threads, thread)
end

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  local auth = os.getenv("WRK_AUTH")
  if auth and auth ~= "" then wrk.headers["Authorization"] = "Bearer " .. auth end
  template = os.getenv("WRK_BODY")
  local s = os.getenv("WRK_SALT")
  salt = (s and s ~= "") and (" " .. s) or ""
end

function request()
  counter = counter + 1
  local w1 = words[(counter % #words) + 1]
  local w2 = words[((counter * 7) % #words) + 1]
  local text = string.format("request %d from thread %d%s asks about %s and %s in a short sentence", counter, thread_id, salt, w1, w2)
  local body = template:gsub("{TEXT}", text)
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, errors, summary.errors.status,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.mean))
end
