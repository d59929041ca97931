"""Triton dies under load and comes back (issue #9, item 1): clean 503s, no hang, /readyz, recovery ≤ 5 s.

A gateway in front of its own tritonserver (not the session's: this test kills it) serves 8 concurrent clients
(`Cache-Control: no-store`, so every request reaches Triton). Mid-load the whole Triton process group gets
SIGKILL; every request must still end in time, as a 200 or a 503 OpenAI envelope with `retry-after`; `/readyz`
must turn 503. Triton then restarts on the same ports and the gateway must serve a 200 again within 5 s of
Triton reporting ready, by itself. The figures are printed (see docs/RELIABILITY.md §1).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

from stack.redis import RedisServer
from stack.triton import TritonServer
from tests.fixtures.gateway import GatewayKeys, RunningGateway, settings_for
from tests.fixtures.servers import start_triton
from tests.reliability_load import Outcome, SteadyLoad, percentile, poll_until, readyz_status, summary

BACKEND_TIMEOUT_S = 2.0
CLIENT_TIMEOUT_S = 15.0  # well above the gateway's deadline: a request that reaches it is a hang
RECOVERY_BOUND_S = 5.0
OUTAGE_S = 10.0  # Triton down at least this long (its restart adds a few seconds)


def assert_clean_failure(o: Outcome) -> None:
    """A refusal while Triton is down: 503, OpenAI envelope, integer retry-after ≤ 60."""
    assert o.status == 503, o
    assert o.envelope_ok and o.error_type == "service_unavailable_error", o
    assert o.retry_after is not None and o.retry_after.isdigit() and 1 <= int(o.retry_after) <= 60, o


def test_triton_sigkilled_under_load_then_restarted(
    minilm_repository: Path, tmp_path: Path, redis_server: RedisServer, gateway_keys: GatewayKeys,
    gateway_factory: Callable[..., RunningGateway],
) -> None:
    triton = start_triton(minilm_repository, tmp_path / "state")
    restarted: TritonServer | None = None
    try:
        gw = gateway_factory(settings_for(triton, redis_server, gateway_keys, backend_timeout_s=BACKEND_TIMEOUT_S,
                                          requests_per_minute=1_000_000, tokens_per_minute=1_000_000_000))
        headers = {"Authorization": f"Bearer {gateway_keys.user}", "Cache-Control": "no-store"}
        assert readyz_status(gw.url) == 200
        with SteadyLoad(gw.url, headers, clients=8, timeout_s=CLIENT_TIMEOUT_S) as load:
            load.wait_for(lambda: load.count(200) >= 20, 60, "20 served before the kill")

            killed_at = time.monotonic()
            triton.signal(signal.SIGKILL)  # the server and its python-backend stubs, at once
            triton.stop()  # reap
            not_ready_after = poll_until(lambda: readyz_status(gw.url) == 503, 5, "/readyz turning 503") - killed_at
            load.wait_for(lambda: load.count(503, since=killed_at) >= 8, 10, "503s while Triton is down")

            # the outage lasts long enough for gRPC's default reconnect backoff to grow past the 5 s bound
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - killed_at)))
            restarted = TritonServer(triton.opts, state_dir=tmp_path / "state", log_path=tmp_path / "triton-2.log")
            restarted.start()
            restarted.wait_ready(restarted.ready, timeout=180, interval=0.05)
            ready_at = time.monotonic()
            ready_again = poll_until(lambda: readyz_status(gw.url) == 200, RECOVERY_BOUND_S + 5, "/readyz 200 again")
            load.wait_for(lambda: load.count(200, since=ready_at) >= 1, RECOVERY_BOUND_S + 5, "a 200 after restart")
            first_ok = min(o.ended for o in list(load.outcomes) if o.status == 200 and o.ended > ready_at)
            load.wait_for(lambda: load.count(200, since=first_ok) >= 20, 60, "20 served after recovery")
            outcomes = load.stop()
        readyz_after = readyz_status(gw.url)
    finally:
        triton.stop()
        if restarted is not None:
            restarted.stop()

    served = [o for o in outcomes if o.status == 200]
    failed = [o for o in outcomes if o.status != 200]
    hung = [o for o in outcomes if o.status is None or o.latency >= CLIENT_TIMEOUT_S]
    recovery_s = first_ok - ready_at
    last_fail = max((o.ended for o in failed), default=killed_at)
    print(f"\ntriton kill: served={len(served)} failed_cleanly={len(failed)} hung={len(hung)} "
          f"statuses={summary(outcomes)} readyz_503_after={not_ready_after:.2f}s "
          f"outage_seen_by_clients={last_fail - killed_at:.2f}s recovery_after_ready={recovery_s:.2f}s "
          f"readyz_200_after_ready={ready_again - ready_at:.2f}s "
          f"max_failed_latency={max((o.latency for o in failed), default=0):.3f}s "
          f"p99_failed_latency={percentile([o.latency for o in failed], 0.99):.3f}s")

    assert not hung, f"requests without an answer in {CLIENT_TIMEOUT_S}s: {hung[:3]}"
    for o in failed:
        assert_clean_failure(o)
        # a refusal is fast: bounded by the gateway's own backend deadline, never by the client's timeout
        assert o.latency < BACKEND_TIMEOUT_S * 3 + 1, o
    assert len(failed) >= 8
    assert recovery_s <= RECOVERY_BOUND_S, f"recovered {recovery_s:.2f}s after Triton was ready"
    assert readyz_after == 200
