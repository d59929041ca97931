"""Redis dies and returns under load (issue #9, item 3): zero 5xx, jobs API 503, everything resumes, no job lost.

Its own redis-server (not the session's: this test kills it) with an append-only file fsynced on every write,
so that what Redis acknowledged survives the crash: that is what "no job lost" can honestly mean — a job the
gateway answered 202 for is durable exactly when Redis persists the write before acknowledging it (a Redis
without persistence loses every queued job on restart, whatever the gateway does). One gateway (cache on with
the in-process L1 off, so every hit proves Redis; rate limits on) and one worker share that Redis. Under steady
embeddings load (half unique sentences, half from a small hot set) a 600-item job is running when Redis gets
SIGKILL. While Redis is away: embeddings keep answering 200 (cache bypassed: hot items miss; limits fail open:
no `x-ratelimit-*` headers), `/v1/jobs` answers a clean 503, `/readyz` 503. Redis restarts on the same port
from its AOF: hot items hit again, `x-ratelimit-*` headers return, the job finishes with each item exactly
once, and a job submitted after recovery completes too. The figures are printed (docs/RELIABILITY.md §3).
"""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import httpx

from stack.process import free_port
from stack.redis import RedisServer
from stack.triton import TritonServer
from tests.fixtures.gateway import GatewayKeys
from tests.fixtures.jobs import jobs_gateway, new_queue, start_worker
from tests.reliability_load import Outcome, SteadyLoad, poll_until, readyz_status, summary
from tests.test_jobs import assert_each_once, embeddings_job, finished, result_lines, sentences, submit, wait_job

JOB_ITEMS = 600
HOT = 8  # hot sentences, each seen many times
MIN_OUTAGE_S = 4.0


class PersistentRedis(RedisServer):
    """A redis-server whose append-only file in `data_dir` is fsynced before every acknowledgement."""

    def __init__(self, port: int, data_dir: Path, log_path: Path) -> None:
        super().__init__(port, log_path=log_path)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.argv[self.argv.index("--appendonly") + 1] = "yes"
        self.argv += ["--appendfsync", "always", "--dir", str(data_dir)]


def mixed_body(tag: str) -> object:
    """Even requests: a fresh sentence; odd: one of `HOT` hot sentences."""
    def body(i: int) -> dict[str, object]:
        text = f"hot sentence {i // 2 % HOT} {tag}" if i % 2 else f"cold sentence {i} {tag}"
        return {"model": "minilm", "input": text}
    return body


def is_hot(o: Outcome) -> bool:
    """A 200 for a hot sentence served entirely from the cache."""
    return o.status == 200 and (o.headers or {}).get("x-cache") == "hit"


def limited(o: Outcome) -> bool:
    """A 200 that carries the rate limiter's headers (the limiter reached Redis)."""
    return o.status == 200 and "x-ratelimit-remaining-requests" in (o.headers or {})


def test_redis_sigkilled_under_load_then_restarted(
    triton_server: TritonServer, minilm_repository: Path, gateway_keys: GatewayKeys, tmp_path: Path,
) -> None:
    redis = PersistentRedis(free_port(), tmp_path / "redis-data", tmp_path / "redis.log").start_and_wait()
    restarted: RedisServer | None = None
    queue = new_queue()
    worker = start_worker(triton_server, redis, minilm_repository, queue, tmp_path)
    gw = jobs_gateway(triton_server, redis, gateway_keys, queue, cache_l1_size=0, redis_timeout_ms=50,
                      jobs_redis_timeout_ms=500)
    headers = {"Authorization": f"Bearer {gateway_keys.user}"}
    try:
        tag = uuid.uuid4().hex[:8]
        with SteadyLoad(gw.url, headers, clients=6, body=mixed_body(tag)) as load:  # type: ignore[arg-type]
            load.wait_for(lambda: sum(map(is_hot, list(load.outcomes))) >= 10, 60, "cache hits before the outage")
            assert any(limited(o) for o in load.outcomes)
            job = submit(gw, headers, embeddings_job(sentences(JOB_ITEMS, tag))).json()
            job, _ = wait_job(gw, headers, job["id"], lambda j: j["progress"]["done"] > 0)
            assert job["progress"]["done"] < JOB_ITEMS, "the job finished before Redis could be killed"

            killed_at = time.monotonic()
            redis.signal(signal.SIGKILL)
            redis.stop()
            poll_until(lambda: readyz_status(gw.url) == 503, 5, "/readyz turning 503")
            refused = submit(gw, headers, embeddings_job(["while redis is away"]))
            status_refused = httpx.get(f"{gw.url}/v1/jobs/{job['id']}", headers=headers, timeout=10)
            # the outage lasts until 60 embeddings were served without Redis, and at least MIN_OUTAGE_S: the
            # gateway's Redis breaker (1 s cooldown) and the worker's backoff have retried and failed again
            load.wait_for(lambda: load.count(200, since=killed_at + 0.5) >= 60
                          and time.monotonic() - killed_at >= MIN_OUTAGE_S, 60, "service without Redis")

            restarted = PersistentRedis(redis.port, tmp_path / "redis-data", tmp_path / "redis-2.log")
            restarting_at = time.monotonic()  # Redis may answer before wait_ready sees it: the outage ends here
            restarted.start()
            restarted.wait_ready(restarted.ready, timeout=15, interval=0.02)
            back_at = time.monotonic()
            load.wait_for(lambda: any(is_hot(o) and o.started > back_at for o in list(load.outcomes)), 10,
                          "a cache hit after Redis returned")
            load.wait_for(lambda: any(limited(o) and o.started > back_at for o in list(load.outcomes)), 10,
                          "x-ratelimit-* headers after Redis returned")
            outcomes = load.stop()
        ready_again = poll_until(lambda: readyz_status(gw.url) == 200, 10, "/readyz 200 again") - back_at

        job, _ = wait_job(gw, headers, job["id"], finished, within_s=120)
        lines = result_lines(gw, headers, job["id"])
        after = submit(gw, headers, embeddings_job(sentences(20, f"after {tag}"))).json()
        after, _ = wait_job(gw, headers, after["id"], finished, within_s=60)
    finally:
        gw.stop()
        worker.process.stop()
        redis.stop()
        if restarted is not None:
            restarted.stop()

    # requests wholly inside the outage: one that ended before the restart began cannot have reached Redis
    outage = [o for o in outcomes if o.started > killed_at + 0.5 and o.ended < restarting_at]
    resumed = [o for o in outcomes if o.started > back_at]
    first_hit = min(o.ended for o in resumed if is_hot(o)) - back_at
    first_limited = min(o.ended for o in resumed if limited(o)) - back_at
    print(f"\nredis kill: total={summary(outcomes)} during_outage={summary(outage)} "
          f"outage_s={restarting_at - killed_at:.2f} hits_during_outage={sum(map(is_hot, outage))} "
          f"limit_headers_during_outage={sum(map(limited, outage))} first_hit_after={first_hit:.2f}s "
          f"first_limit_headers_after={first_limited:.2f}s readyz_200_after={ready_again:.2f}s "
          f"job={job['status']} attempts={job['attempts']} progress={job['progress']} lines={len(lines)}")

    assert all(o.status == 200 for o in outcomes), f"not every embeddings request was served: {summary(outcomes)}"
    assert len(outage) >= 60
    assert not any(map(is_hot, outage)), "no cache hit is possible without Redis (L1 is off)"
    assert not any(map(limited, outage)), "the limiter fails open, without headers it could not compute"
    for response in (refused, status_refused):
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "jobs_unavailable"
        assert response.headers["retry-after"].isdigit()
    assert job["status"] == "succeeded" and job["progress"] == {"done": JOB_ITEMS, "total": JOB_ITEMS, "failed": 0}
    assert_each_once(lines, JOB_ITEMS)
    assert after["status"] == "succeeded"
