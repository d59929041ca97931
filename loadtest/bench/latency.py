"""Where a single request's time goes: the mean latency at concurrency 1 split by the timers each layer keeps.

Read around one closed-loop run (wrk at c=1, so the mean latency is duration / requests) from the metrics the
stack exports anyway — no instrumentation of its own:

- Triton's own time per inference request (`/v2/models/{m}/stats`: queue + compute, "success");
- the gateway's wait on the backend (`gateway_backend_duration_seconds`): Triton's time plus the Triton client and
  transport, and the single-flight/coalescing plumbing around the call;
- the gateway's request time (`gateway_request_duration_seconds`, ASGI app entry to the last body byte);
- what the client saw. The rest, client minus request time, is outside the app: HTTP parsing and the socket
  writes in uvicorn, the loopback, wrk.

Direct Triton gets the same split with only the first and the last.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from loadtest.wrk import WrkResult


@dataclass(frozen=True)
class Timers:
    """Cumulative sums (seconds) and counts, as read at one moment."""

    triton_s: float = 0.0
    triton_n: int = 0
    backend_s: float = 0.0
    backend_n: int = 0
    request_s: float = 0.0
    request_n: int = 0

    def __sub__(self, other: Timers) -> Timers:
        return Timers(*(a - b for a, b in zip(self.values(), other.values(), strict=True)))

    def values(self) -> tuple[float, ...]:
        return (self.triton_s, self.triton_n, self.backend_s, self.backend_n, self.request_s, self.request_n)


def triton_time(triton_http: str, model: str) -> tuple[float, int]:
    """Triton's cumulative successful-inference time (s) and count for `model`, over its versions."""
    stats = httpx.get(f"http://{triton_http}/v2/models/{model}/stats", timeout=10).json()["model_stats"]
    ns = sum(int(s["inference_stats"]["success"]["ns"]) for s in stats)
    return ns / 1e9, sum(int(s["inference_stats"]["success"]["count"]) for s in stats)


def gateway_timers(metrics_url: str, route: str, model: str) -> tuple[float, int, float, int]:
    """(backend wait sum, count, request time sum, count) of `model` on `route` from the gateway's /metrics."""
    found = {"backend_sum": 0.0, "backend_count": 0.0, "request_sum": 0.0, "request_count": 0.0}
    for family in text_string_to_metric_families(httpx.get(metrics_url, timeout=10).text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name.startswith("gateway_backend_duration_seconds_") and labels.get("model") == model:
                found[f"backend_{sample.name.rsplit('_', 1)[1]}"] = sample.value
            elif (sample.name.startswith("gateway_request_duration_seconds_") and labels.get("route") == route
                  and labels.get("model") == model):
                found[f"request_{sample.name.rsplit('_', 1)[1]}"] = sample.value
    return (found["backend_sum"], int(found["backend_count"]), found["request_sum"], int(found["request_count"]))


def read(triton_http: str, model: str, metrics_url: str | None = None, route: str = "") -> Timers:
    """Every timer at once (`metrics_url` None: Triton's only, for the direct path)."""
    t_s, t_n = triton_time(triton_http, model)
    if metrics_url is None:
        return Timers(t_s, t_n)
    return Timers(t_s, t_n, *gateway_timers(metrics_url, route, model))


@dataclass(frozen=True)
class Split:
    """Mean milliseconds per request of one run, layer by layer (None where the path has no such layer)."""

    client_ms: float
    triton_ms: float
    backend_ms: float | None
    request_ms: float | None

    @classmethod
    def of(cls, run: WrkResult, timers: Timers) -> Split:
        client = 1e3 * run.duration_s * run.connections / max(run.requests, 1)  # closed loop: mean latency

        def mean(total: float, n: int) -> float | None:
            return 1e3 * total / n if n else None

        return cls(client, mean(timers.triton_s, timers.triton_n) or 0.0, mean(timers.backend_s, timers.backend_n),
                   mean(timers.request_s, timers.request_n))


def rows(direct: list[Split], gateway: list[Split]) -> list[list[str]]:
    """The table: each layer's mean ms for direct Triton and the gateway (medians over rounds), and the difference."""

    def med(splits: list[Split], fn) -> float | None:  # type: ignore[no-untyped-def]
        values = [v for v in (fn(s) for s in splits) if v is not None]
        return statistics.median(values) if values else None

    layers = [
        ("Triton's own time (queue + compute)", lambda s: s.triton_ms, lambda s: s.triton_ms),
        ("backend call beyond Triton's time (Triton client and transport, single-flight and coalescing)",
         lambda s: 0.0, lambda s: s.backend_ms - s.triton_ms if s.backend_ms is not None else None),
        ("gateway app outside the backend call (routing, auth, rate limit, cache keys, encoding)",
         lambda s: 0.0, lambda s: s.request_ms - s.backend_ms if None not in (s.request_ms, s.backend_ms) else None),
        ("outside the app (HTTP server, sockets, wrk)",
         lambda s: s.client_ms - s.triton_ms, lambda s: s.client_ms - s.request_ms if s.request_ms else None),
        ("**client-observed mean latency**", lambda s: s.client_ms, lambda s: s.client_ms),
    ]
    out = []
    for label, of_direct, of_gateway in layers:
        d, g = med(direct, of_direct), med(gateway, of_gateway)
        cells = [f"{v:.2f}" if v is not None else "—" for v in (d, g)]
        diff = f"{g - d:+.2f}" if d is not None and g is not None else "—"
        out.append([label, *cells, diff])
    return out
