"""Several Triton servers behind one `Backend`: least in-flight balancing, health checks, ejection.

Why: a client keeps a few long-lived connections per target (one HTTP/2 connection for gRPC, a keep-alive pool
for HTTP), so a Kubernetes ClusterIP Service (an L4 balancer) pins each gateway replica to one Triton pod. The
pool holds one `TritonBackend` per Triton server (its gRPC URL, and its HTTP address when given) and picks the
endpoint per request:

- **choice**: the healthy endpoint with the fewest requests in flight through this process; ties rotate (round
  robin), so an idle pool alternates.
- **active health checks**: a background task asks every endpoint whether it is ready each `health_interval_s`
  (with `health_timeout_s`); a failing endpoint is ejected, a passing one readmitted.
- **passive ejection**: a request failing with a connection-level `BackendUnavailableError` (Triton unreachable,
  not a full queue, not a model error) ejects its endpoint at once and is retried once on another healthy
  endpoint (inference is idempotent). A "model not found" is retried once elsewhere too, without ejection: a
  Triton that received SIGTERM unloads its models at once and answers so until it exits. A stream is retried
  only when nothing was yielded yet.
- **all ejected**: requests go to the least recently failed endpoint instead of failing untried (a lone
  restarted Triton answers the next request, and a success readmits it); when that fails too, the caller gets
  the `BackendUnavailableError` (503 with `retry-after`).

gRPC channels back off exponentially between reconnection attempts (up to 2 minutes by default), which would
delay readmission of a restarted Triton, and re-resolve a name at most every 30 s: every channel caps both at a
second (`gateway.backends.triton_grpc.reconnecting_channel_args`). HTTP connections are opened per request when
none is idle, and names re-resolved every second (`triton_http_session`).

With one URL, `build_triton` returns a plain `TritonBackend`: the pool costs nothing there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from gateway.backends.base import EmbedResult, ModelEntry, ModelInfo, RowsResult
from gateway.backends.triton import TritonBackend
from gateway.errors import BackendUnavailableError, GatewayError, NotFoundError
from gateway.metrics import GatewayMetrics

log = logging.getLogger("gateway.backends.pool")

T = TypeVar("T")


def connection_error(exc: BaseException) -> bool:
    """True for a failure to reach the server (ejects it), not a full queue or a model error."""
    return isinstance(exc, BackendUnavailableError) and exc.code == BackendUnavailableError.default_code


def retryable(exc: BaseException) -> bool:
    """Worth one more try on another endpoint: unreachable, or the model unknown there (a Triton shutting down
    unloads its models at once and answers "not found" for a few seconds before it closes its ports)."""
    return connection_error(exc) or isinstance(exc, NotFoundError)


@dataclass(eq=False)
class Endpoint:
    """One Triton server of the pool: its client and what the pool knows about it."""

    index: int
    url: str
    backend: TritonBackend
    healthy: bool = True
    in_flight: int = 0
    failed_at: float = 0.0  # monotonic time of the last failure; 0 = never failed


class TritonPool:
    """A `Backend` (plus `stream_infer`) over several Triton endpoints; see the module docstring."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        timeout_s: float,
        model_info_ttl_s: float,
        health_interval_s: float = 1.0,
        health_timeout_s: float = 1.0,
        metrics: GatewayMetrics | None = None,
        http_urls: Sequence[str] | None = None,
        **options: Any,
    ) -> None:
        """One `TritonBackend` per gRPC URL, with the HTTP address of the same index in `http_urls` when given;
        `options` are passed on to each (e.g. `coalesce_in_flight`, `session`)."""
        if not urls:
            raise ValueError("a Triton pool needs at least one gRPC URL")
        if http_urls is not None and len(http_urls) != len(urls):
            raise ValueError("one HTTP address per Triton gRPC URL is needed")
        self.endpoints = [
            Endpoint(i, url, TritonBackend(url, timeout_s=timeout_s, model_info_ttl_s=model_info_ttl_s,
                                           metrics=metrics, http_url=http_urls[i] if http_urls else None,
                                           **options))
            for i, url in enumerate(urls)
        ]
        self._interval_s = health_interval_s
        self._health_timeout_s = health_timeout_s
        self._metrics = metrics
        self._turn = 0
        self._task: asyncio.Task[None] | None = None
        if metrics is not None:
            for ep in self.endpoints:
                metrics.triton_endpoint_in_flight.labels(ep.url).set_function(lambda ep=ep: ep.in_flight)
                metrics.triton_endpoint_healthy.labels(ep.url).set_function(lambda ep=ep: float(ep.healthy))

    # --- choice, ejection, readmission ---------------------------------------------------------------------

    def choose(self, exclude: Endpoint | None = None, *, rotate: bool = True) -> Endpoint | None:
        """The healthy endpoint with the fewest requests in flight; None when none is healthy.

        Ties go round robin: each choice starts the search one endpoint further, unless `rotate` is false
        (metadata calls, so that a request's metadata lookup does not steer its inference in lock step)."""
        endpoints = self.endpoints
        n = len(endpoints)
        start = self._turn
        if rotate:
            self._turn = start = (start + 1) % n
        best: Endpoint | None = None
        for i in range(n):
            ep = endpoints[(start + i) % n]
            if ep.healthy and ep is not exclude and (best is None or ep.in_flight < best.in_flight):
                best = ep
        return best

    def first_choice(self, *, rotate: bool = True) -> Endpoint:
        """`choose()`, or the least recently failed endpoint when every one is ejected."""
        ep = self.choose(rotate=rotate)
        if ep is None:
            ep = min(self.endpoints, key=lambda e: e.failed_at)
        return ep

    def eject(self, ep: Endpoint, reason: str) -> None:
        """Mark `ep` failed now; out of rotation until a health check or a request succeeds on it."""
        ep.failed_at = time.monotonic()
        if ep.healthy:
            ep.healthy = False
            log.warning("Triton endpoint %s ejected (%s)", ep.url, reason)
            if self._metrics is not None:
                self._metrics.triton_endpoint_ejections.labels(ep.url, reason).inc()

    def readmit(self, ep: Endpoint) -> None:
        """Put `ep` back into rotation."""
        if not ep.healthy:
            ep.healthy = True
            log.info("Triton endpoint %s readmitted", ep.url)

    # --- requests --------------------------------------------------------------------------------------------

    async def run(self, fn: Callable[[Endpoint], Awaitable[T]], *, rotate: bool = True) -> T:
        """`fn(endpoint)` on the chosen endpoint; once more on another healthy one when the first is unreachable
        (which also ejects it) or does not know the model (`retryable`)."""
        ep = self.first_choice(rotate=rotate)
        try:
            return await self._on(ep, fn)
        except GatewayError as exc:
            retry = self.choose(exclude=ep) if retryable(exc) else None
            if retry is None:
                raise
        return await self._on(retry, fn)

    async def _on(self, ep: Endpoint, fn: Callable[[Endpoint], Awaitable[T]]) -> T:
        """`fn` on `ep`, counted in flight; ejects `ep` on a connection failure, readmits it on success."""
        ep.in_flight += 1
        try:
            result = await fn(ep)
        except GatewayError as exc:
            if connection_error(exc):
                self.eject(ep, "request")
            raise
        finally:
            ep.in_flight -= 1
        if not ep.healthy:
            self.readmit(ep)
        return result

    async def embed(self, model: str, texts: Sequence[str], *, version: str = "") -> EmbedResult:
        """Embed on the chosen endpoint (see `TritonBackend.embed`); retried once elsewhere when unreachable."""
        return await self.run(lambda ep: ep.backend.embed(model, texts, version=version))

    async def infer_rows(self, model: str, inputs: Mapping[str, Sequence[str]], outputs: Sequence[str], *,
                         version: str = "") -> RowsResult:
        """`TritonBackend.infer_rows` on the chosen endpoint; retried once elsewhere when unreachable."""
        return await self.run(lambda ep: ep.backend.infer_rows(model, inputs, outputs, version=version))

    async def model_info(self, model: str) -> ModelInfo:
        """Metadata of a ready model, from a healthy endpoint."""
        return await self.run(lambda ep: ep.backend.model_info(model), rotate=False)

    async def list_ready_models(self) -> list[ModelEntry]:
        """Ready models, as a healthy endpoint lists them."""
        return await self.run(lambda ep: ep.backend.list_ready_models(), rotate=False)

    async def ready(self) -> bool:
        """True when at least one endpoint is healthy."""
        return any(ep.healthy for ep in self.endpoints)

    def invalidate(self, model: str) -> None:
        """Forget cached metadata of `model` on every endpoint."""
        for ep in self.endpoints:
            ep.backend.invalidate(model)

    async def stream_infer(self, model: str, inputs: Mapping[str, np.ndarray], *, timeout_s: float,
                           request_id: str = "") -> AsyncIterator[dict[str, np.ndarray]]:
        """`TritonBackend.stream_infer` on the chosen endpoint; retried elsewhere only before the first response."""
        ep = self.first_choice()
        for attempt in (1, 2):
            yielded = False
            ep.in_flight += 1
            try:
                async with contextlib.aclosing(ep.backend.stream_infer(
                        model, inputs, timeout_s=timeout_s, request_id=request_id)) as responses:
                    async for outputs in responses:
                        yielded = True
                        yield outputs
                self.readmit(ep)
                return
            except GatewayError as exc:
                if connection_error(exc):
                    self.eject(ep, "request")
                retry = self.choose(exclude=ep) if retryable(exc) and not yielded and attempt == 1 else None
                if retry is None:
                    raise
            finally:
                ep.in_flight -= 1
            ep = retry

    # --- health checks ---------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the health-check task (inside the running event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._health_loop(), name="triton-pool-health")

    async def check(self) -> None:
        """One health-check round over every endpoint, concurrently."""
        await asyncio.gather(*(self._check(ep) for ep in self.endpoints))

    async def _check(self, ep: Endpoint) -> None:
        started = time.monotonic()
        ok = await ep.backend.ready(timeout_s=self._health_timeout_s)
        if not ok:
            self.eject(ep, "health_check")
        elif ep.failed_at < started:  # a request failing while the check ran wins
            self.readmit(ep)

    async def _health_loop(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # never let the checker die; an endpoint's check failing is handled in _check
                log.exception("Triton health check round failed")
            await asyncio.sleep(self._interval_s)

    async def close(self) -> None:
        """Stop health checks and close every channel."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await asyncio.gather(*(ep.backend.close() for ep in self.endpoints))


def build_triton(
    urls: Sequence[str],
    *,
    timeout_s: float,
    model_info_ttl_s: float,
    health_interval_s: float = 1.0,
    health_timeout_s: float = 1.0,
    metrics: GatewayMetrics | None = None,
    http_urls: Sequence[str] | None = None,
    **options: Any,
) -> TritonBackend | TritonPool:
    """A plain `TritonBackend` for one URL, else a started `TritonPool` (call inside the event loop); `http_urls`
    pair an HTTP address with each gRPC URL (unary calls over HTTP); `options` go to every `TritonBackend`."""
    if len(urls) == 1:
        return TritonBackend(urls[0], timeout_s=timeout_s, model_info_ttl_s=model_info_ttl_s, metrics=metrics,
                             http_url=http_urls[0] if http_urls else None, **options)
    pool = TritonPool(urls, timeout_s=timeout_s, model_info_ttl_s=model_info_ttl_s,
                      health_interval_s=health_interval_s, health_timeout_s=health_timeout_s, metrics=metrics,
                      http_urls=http_urls, **options)
    pool.start()
    return pool
