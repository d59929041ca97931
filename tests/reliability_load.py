"""Steady concurrent load for the fault-injection tests: N async clients in a background thread.

Each client posts to the gateway in a loop until `stop()` and records one `Outcome` per request (status,
latency, `retry-after`, the error envelope's type and code, or the client-side exception when no response came
back). The load runs in its own thread and event loop so that the test's main thread can kill and restart
servers (blocking calls) while requests keep flowing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from stack.gateway import ENV_PREFIX as GATEWAY_ENV_PREFIX
from stack.gateway import start_gateway
from stack.process import ManagedProcess, free_port

ENVELOPE_KEYS = {"message", "type", "param", "code"}


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request: when it started and ended (monotonic), what came back."""

    started: float
    ended: float
    status: int | None  # None: no response (client timeout or connection error)
    retry_after: str | None = None
    error_type: str | None = None
    error_code: str | None = None
    envelope_ok: bool = True
    exception: str | None = None
    headers: dict[str, str] | None = None

    @property
    def latency(self) -> float:
        """Seconds from send to answer."""
        return self.ended - self.started


def outcome_of(started: float, status: int, raw_headers: Mapping[str, str], body: bytes) -> Outcome:
    """Record a response: for errors, whether the body is the OpenAI envelope."""
    ended = time.monotonic()
    headers = {k.lower(): v for k, v in raw_headers.items()}
    if status < 400:
        return Outcome(started, ended, status, headers=headers)
    try:
        error = json.loads(body)["error"]
        ok = isinstance(error, dict) and set(error) == ENVELOPE_KEYS and isinstance(error["message"], str)
    except (ValueError, KeyError, TypeError):
        error, ok = {}, False
    return Outcome(started, ended, status, headers.get("retry-after"),
                   error.get("type") if ok else None, error.get("code") if ok else None, ok, headers=headers)


def unique_embeddings_body(model: str = "minilm") -> Callable[[int], dict[str, Any]]:
    """Bodies with a fresh sentence each (never a cache hit)."""
    tag = uuid.uuid4().hex[:8]
    return lambda i: {"model": model, "input": f"steady load {tag} request {i}: the quick brown fox"}


class SteadyLoad:
    """`clients` concurrent loops of `POST url/path` with `body(i)` until stopped."""

    def __init__(self, url: str, headers: dict[str, str], *, clients: int = 8, timeout_s: float = 15.0,
                 path: str = "/v1/embeddings", body: Callable[[int], dict[str, Any]] | None = None,
                 pause_after_error_s: float = 0.05) -> None:
        """`pause_after_error_s`: a client waits that long after an error (a refusal must not turn into a spin)."""
        self.url = url
        self.headers = headers
        self.clients = clients
        self.timeout_s = timeout_s
        self.path = path
        self.body = body or unique_embeddings_body()
        self.pause_after_error_s = pause_after_error_s
        self.outcomes: list[Outcome] = []
        self._counter = itertools.count()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="steady-load", daemon=True)

    def __enter__(self) -> SteadyLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[Outcome]:
        """Stop sending, wait for the requests in flight (each bounded by the client timeout)."""
        self._stopping.set()
        self._thread.join(self.timeout_s + 10)
        assert not self._thread.is_alive(), "the load thread did not stop"
        return list(self.outcomes)

    def count(self, status: int | None = 200, since: float = -math.inf) -> int:
        """Responses with `status` that ended after `since`."""
        return sum(1 for o in list(self.outcomes) if o.status == status and o.ended > since)

    def wait_for(self, condition: Callable[[], bool], within_s: float, what: str) -> None:
        """Poll `condition` (e.g. enough 200s) with a deadline."""
        deadline = time.monotonic() + within_s
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}; outcomes: {summary(self.outcomes)}"
            time.sleep(0.02)

    async def _main(self) -> None:
        # aiohttp, not httpx: with dozens of concurrent connections httpx's own pool costs the client
        # hundreds of milliseconds per request on a busy machine, which would be measured as server latency
        connector = aiohttp.TCPConnector(limit=self.clients)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(self.url, headers=self.headers, timeout=timeout,
                                         connector=connector) as session:
            await asyncio.gather(*(self._client(session) for _ in range(self.clients)))

    async def _client(self, session: aiohttp.ClientSession) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                async with session.post(self.path, json=self.body(next(self._counter))) as response:
                    body = await response.read()
                self.outcomes.append(outcome_of(started, response.status, response.headers, body))
                failed = response.status >= 400
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.outcomes.append(Outcome(started, time.monotonic(), None, exception=type(exc).__name__))
                failed = True
            if failed:
                await asyncio.sleep(self.pause_after_error_s)


def summary(outcomes: list[Outcome]) -> dict[str, int]:
    """Counts per status ("none" = no response)."""
    counts: dict[str, int] = {}
    for o in outcomes:
        key = str(o.status) if o.status is not None else f"none:{o.exception}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by the nearest-rank method; nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def readyz_status(url: str) -> int:
    """The status of `GET /readyz` (0 when the gateway did not answer)."""
    try:
        return httpx.get(f"{url}/readyz", timeout=3).status_code
    except httpx.HTTPError:
        return 0


def poll_until(check: Callable[[], bool], within_s: float, what: str, interval: float = 0.05) -> float:
    """Poll `check` until true; the time it first held (monotonic). Fails after `within_s`."""
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {within_s:.0f}s"
        time.sleep(interval)
    return time.monotonic()


def spawn_gateway(settings: dict[str, Any], log_dir: Path) -> tuple[ManagedProcess, str]:
    """`tritonstack gateway` as its own process (own GIL and event loop, like production) with `settings` as
    `TRITONSTACK_GATEWAY_*` (none from this process's environment); ready once `/healthz` answers. The caller
    stops the process."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(GATEWAY_ENV_PREFIX)}
    gateway = start_gateway(settings, port=port, name=f"gateway-{port}", log_path=log_dir / f"gateway-{port}.log",
                            log_level="warning", base_env=env)
    return gateway.process, gateway.url
