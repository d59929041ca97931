"""Load shedding keeps admitted requests fast under overload (issue #9, item 2).

The same overload (more concurrent clients than the model serves; unique inputs, `Cache-Control: no-store`) is
sent to two gateways on the same Triton, one after the other: one with the default in-flight bound (512:
effectively unbounded here, every request queues) and one with `max_in_flight=4` (the rest are refused at once
with 503 `overloaded` + `retry-after`). Admitted requests' p99 must be clearly lower with shedding, and the
refusals fast. Queue-full → 503 and deadline → 504 are in tests/test_gateway_failures.py. The figures are
printed (docs/RELIABILITY.md §2).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stack.redis import RedisServer
from stack.triton import TritonServer
from tests.fixtures.gateway import GatewayKeys
from tests.reliability_load import Outcome, SteadyLoad, percentile, spawn_gateway, summary

CLIENTS = 64
SHED_IN_FLIGHT = 4
ITEMS = 4  # sentences per request: the model, not the test's own HTTP client, is the bottleneck
WARMUP_OK = 10  # 200s before the measured window starts
MEASURED_OK = 120  # 200s in the measured window


def batch_body(i: int) -> dict[str, Any]:
    """`ITEMS` fresh sentences."""
    return {"model": "minilm", "input": [f"overload {i}.{j} {uuid.uuid4().hex}: a sentence of some length"
                                         for j in range(ITEMS)]}


@dataclass(frozen=True)
class Phase:
    """What one gateway configuration did in the measured window."""

    name: str
    admitted: list[Outcome]
    shed: list[Outcome]
    other: list[Outcome]
    seconds: float

    def line(self) -> str:
        """The printed figures."""
        lat = [o.latency * 1000 for o in self.admitted]
        shed = [o.latency * 1000 for o in self.shed]
        return (f"{self.name}: admitted={len(self.admitted)} ({len(self.admitted) / self.seconds:.0f}/s) "
                f"p50={percentile(lat, 0.5):.0f}ms p99={percentile(lat, 0.99):.0f}ms "
                f"shed={len(self.shed)} shed_p50={percentile(shed, 0.5):.1f}ms shed_p99={percentile(shed, 0.99):.1f}ms "
                f"other={summary(self.other)}")


def overload(settings: dict[str, Any], keys: GatewayKeys, name: str, log_dir: Path) -> Phase:
    """A gateway process with `settings`; `CLIENTS` concurrent clients until `MEASURED_OK` 200s after a
    warm-up (a shed client waits 250 ms before its next request, as a client honouring `retry-after`
    would wait longer)."""
    process, url = spawn_gateway(settings, log_dir)
    try:
        return _measure(url, keys, name)
    finally:
        process.stop()


def _measure(url: str, keys: GatewayKeys, name: str) -> Phase:
    headers = {"Authorization": f"Bearer {keys.user}", "Cache-Control": "no-store"}
    with SteadyLoad(url, headers, clients=CLIENTS, timeout_s=60, body=batch_body,
                    pause_after_error_s=0.25) as load:
        load.wait_for(lambda: load.count(200) >= WARMUP_OK, 60, "warm-up")
        start = max(o.ended for o in list(load.outcomes) if o.status == 200)
        load.wait_for(lambda: load.count(200, since=start) >= MEASURED_OK, 120, "the measured window")
        outcomes = load.stop()
    window = [o for o in outcomes if o.started >= start]
    end = max(o.ended for o in window)
    return Phase(name, [o for o in window if o.status == 200], [o for o in window if o.status == 503],
                 [o for o in window if o.status not in (200, 503)], end - start)


def test_shedding_bounds_p99_of_admitted_requests(
    triton_server: TritonServer, redis_server: RedisServer, gateway_keys: GatewayKeys, tmp_path: Path,
) -> None:
    settings = {"triton_grpc_url": triton_server.grpc_url, "triton_http_url": triton_server.http_url,
                "redis_url": redis_server.url, "requests_per_minute": 10_000_000, "tokens_per_minute": 1_000_000_000,
                "api_keys": [k.model_dump(mode="json") for k in gateway_keys.config()], "log_level": "warning"}
    unbounded = overload(settings, gateway_keys, "unbounded (max_in_flight=512)", tmp_path)
    shedding = overload({**settings, "max_in_flight": SHED_IN_FLIGHT}, gateway_keys,
                        f"shedding (max_in_flight={SHED_IN_FLIGHT})", tmp_path)
    print(f"\noverload, {CLIENTS} clients × {ITEMS} sentences:\n  {unbounded.line()}\n  {shedding.line()}")

    assert not unbounded.other and not shedding.other
    assert not unbounded.shed, "the unbounded gateway must queue, not refuse"
    assert shedding.shed, f"{CLIENTS} clients against {SHED_IN_FLIGHT} slots must be shed"
    for o in shedding.shed:
        assert o.envelope_ok and o.error_code == "overloaded" and o.retry_after == "1", o
    p99_unbounded = percentile([o.latency for o in unbounded.admitted], 0.99)
    p99_shedding = percentile([o.latency for o in shedding.admitted], 0.99)
    assert p99_shedding < p99_unbounded / 2, (p99_shedding, p99_unbounded)
    # a refusal never waits for the model: faster than the admitted requests it protects
    shed = [o.latency for o in shedding.shed]
    assert percentile(shed, 0.5) < percentile([o.latency for o in shedding.admitted], 0.5) / 2
    # and even a slow refusal comes back sooner than a typical request queued without shedding
    assert percentile(shed, 0.99) < percentile([o.latency for o in unbounded.admitted], 0.5)
