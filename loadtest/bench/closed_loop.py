"""A closed-loop HTTP client for requests that take seconds (`bench rerank`), where wrk does not fit.

`concurrency` clients each POST one request, wait for its answer, and send the next, until `duration_s` has passed;
a request started before then is always waited for (no answer is abandoned, so the server is idle when a run
returns and the next run does not pay for this one's leftovers). Every body is the template with `{TEXT}` replaced
by a sentence unique to the run (`salt`), the client and the request. Throughput is the sum over clients of each
client's answers divided by its busy time (its first send to its last answer): no rounding to whole requests in a
window, which matters when one request takes a large part of the run. The client runs in the benchmark's process;
the servers it measures are other processes.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field

import httpx

TIMEOUT_S = 600.0  # a request that long is an error


@dataclass(frozen=True)
class Client:
    """One client's run: the latency of each 2xx answer (seconds), its failures, its busy time (seconds)."""

    latencies_s: list[float]
    errors: int
    busy_s: float


@dataclass(frozen=True)
class LoopResult:
    """One closed-loop run of `concurrency` clients."""

    concurrency: int
    clients: list[Client] = field(default_factory=list)

    @property
    def requests(self) -> int:
        """2xx answers over every client."""
        return sum(len(c.latencies_s) for c in self.clients)

    @property
    def errors(self) -> int:
        """Transport errors and non-2xx answers."""
        return sum(c.errors for c in self.clients)

    @property
    def rps(self) -> float:
        """2xx answers per second: the sum of each client's rate over its busy time."""
        return sum(len(c.latencies_s) / c.busy_s for c in self.clients if c.busy_s > 0)

    def percentile_ms(self, q: float) -> float:
        """The `q`-th percentile (0-100, linear interpolation) of the 2xx latencies, ms; NaN without any."""
        values = sorted(x for c in self.clients for x in c.latencies_s)
        if not values:
            return float("nan")
        if len(values) == 1:
            return 1000 * values[0]
        return 1000 * statistics.quantiles(values, n=100, method="inclusive")[min(max(round(q), 1), 99) - 1]

    @property
    def p50_ms(self) -> float:
        return self.percentile_ms(50)

    @property
    def p99_ms(self) -> float:
        return self.percentile_ms(99)


def sentence(salt: str, client: int, request: int) -> str:
    """The unique sentence of one request (what `{TEXT}` becomes)."""
    return f"request {request} from client {client} of {salt} asks about serving and batching"


async def _client(http: httpx.AsyncClient, url: str, template: str, headers: dict[str, str], salt: str, k: int,
                  deadline: float) -> Client:
    latencies: list[float] = []
    errors, i = 0, 0
    start = last = time.perf_counter()
    while time.perf_counter() < deadline:
        body = template.replace("{TEXT}", sentence(salt, k, i))
        i += 1
        sent = time.perf_counter()
        try:
            answer = await http.post(url, content=body, headers=headers)
            ok = 200 <= answer.status_code < 300
        except httpx.HTTPError:
            ok = False
        last = time.perf_counter()
        if ok:
            latencies.append(last - sent)
        else:
            errors += 1
    return Client(latencies, errors, last - start)


async def _run(url: str, template: str, concurrency: int, duration_s: float, auth: str | None,
               salt: str) -> LoopResult:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {auth}"} if auth else {})}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=TIMEOUT_S, limits=limits) as http:
        deadline = time.perf_counter() + duration_s
        clients = await asyncio.gather(*(_client(http, url, template, headers, salt, k, deadline)
                                         for k in range(concurrency)))
    return LoopResult(concurrency, list(clients))


def run_closed_loop(url: str, template: str, *, concurrency: int, duration_s: float, auth: str | None = None,
                    salt: str = "") -> LoopResult:
    """POST `template` (with `{TEXT}` made unique per request) to `url` from `concurrency` clients for
    `duration_s`, waiting for every request started; see the module's docstring."""
    return asyncio.run(_run(url, template, concurrency, duration_s, auth, salt))
