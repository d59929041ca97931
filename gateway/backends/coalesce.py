"""Request coalescing for embeddings: concurrent calls for the same model and version share Triton requests.

Every inference request costs the gateway a gRPC call (Python-side serialisation, a task, a wake-up) and costs
Triton's python backend a request object and a response, whatever its size. Under load the gateway therefore
merges the texts of concurrent callers into one request, like Triton's dynamic batcher does one level down:

- at most `max_in_flight` requests per (model, version) are in flight; while they are, new callers queue;
- when a request returns, the queued callers (up to `max_items` texts) go out together at once — no timer, so
  a lone caller never waits and the batch size follows the load; a caller that finds nothing in flight sends its
  own request from its own task (no hand-off to another task, no extra wake-up), and the callers that arrive
  while it is in flight are batched by a task of their own;
- a merged request that fails for a reason of its own input (the model rejected it) is retried caller by caller,
  so one bad input fails only its own caller; other failures (server down, timeout) fail every caller of the
  request at once instead of multiplying calls to a server in trouble.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from gateway.backends.base import EmbedResult
from gateway.errors import InvalidRequestError

Send = Callable[[str, str, Sequence[str]], Awaitable[EmbedResult]]


@dataclass(slots=True)
class _Call:
    texts: Sequence[str]
    future: asyncio.Future[EmbedResult]


@dataclass(slots=True)
class _Lane:
    """Callers waiting for one (model, version), and how many requests of it are in flight."""

    queue: list[_Call] = field(default_factory=list)
    in_flight: int = 0


class EmbedCoalescer:
    """Merges concurrent `embed` calls for one (model, version) into requests of up to `max_items` texts."""

    def __init__(self, send: Send, *, max_in_flight: int = 4) -> None:
        self._send = send
        self.max_in_flight = max_in_flight
        self._lanes: dict[tuple[str, str], _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.requests = 0  # inference requests sent (a counter for tests and metrics)

    async def embed(self, model: str, version: str, texts: Sequence[str], max_items: int) -> EmbedResult:
        """The embeddings of `texts` (at most `max_items` of them), computed in a shared request."""
        key = (model, version)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        if lane.in_flight == 0:  # an idle lane: send at once (callers arriving meanwhile are batched behind it)
            lane.in_flight += 1
            self.requests += 1
            try:
                return await self._send(model, version, texts)
            finally:
                self._release(key, lane, max_items)
        call = _Call(texts, asyncio.get_running_loop().create_future())
        lane.queue.append(call)
        if lane.in_flight < self.max_in_flight:
            lane.in_flight += 1
            self._start_drain(key, lane, max_items)
        return await call.future  # a cancelled caller cancels only its own future

    def _start_drain(self, key: tuple[str, str], lane: _Lane, max_items: int) -> None:
        """A task sending the queued callers, in a slot already counted in `lane.in_flight`."""
        task = asyncio.ensure_future(self._drain(key, lane, max_items))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _release(self, key: tuple[str, str], lane: _Lane, max_items: int) -> None:
        """A request of `lane` returned: its slot serves the queued callers, or is freed."""
        if lane.queue:
            self._start_drain(key, lane, max_items)
            return
        lane.in_flight -= 1
        if lane.in_flight == 0 and self._lanes.get(key) is lane:
            del self._lanes[key]

    async def _drain(self, key: tuple[str, str], lane: _Lane, max_items: int) -> None:
        try:
            while lane.queue:
                batch = _take(lane.queue, max_items)
                await self._run(key, batch)
        finally:
            lane.in_flight -= 1
            if lane.in_flight == 0 and not lane.queue and self._lanes.get(key) is lane:
                del self._lanes[key]

    async def _run(self, key: tuple[str, str], batch: list[_Call]) -> None:
        model, version = key
        texts = [t for call in batch for t in call.texts]
        self.requests += 1
        try:
            result = await self._send(model, version, texts)
        except InvalidRequestError as exc:
            if len(batch) == 1:
                _fail(batch, exc)
            else:  # find whose input it was: each caller on its own
                await asyncio.gather(*(self._run(key, [call]) for call in batch))
            return
        except Exception as exc:
            _fail(batch, exc)
            return
        _split(batch, result)

    async def aclose(self) -> None:
        """Wait for the requests in flight (shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _take(queue: list[_Call], max_items: int) -> list[_Call]:
    """Callers from the head of `queue` whose texts fit in `max_items` (always at least one)."""
    n, size = 0, 0
    while n < len(queue) and (n == 0 or size + len(queue[n].texts) <= max_items):
        size += len(queue[n].texts)
        n += 1
    batch = queue[:n]
    del queue[:n]
    return batch


def _fail(batch: list[_Call], exc: BaseException) -> None:
    for call in batch:
        if not call.future.done():
            call.future.set_exception(exc)


def _split(batch: list[_Call], result: EmbedResult) -> None:
    if len(batch) == 1:
        if not batch[0].future.done():
            batch[0].future.set_result(result)
        return
    start = 0
    for call in batch:
        end = start + len(call.texts)
        if not call.future.done():
            call.future.set_result(EmbedResult(
                vectors=np.ascontiguousarray(result.vectors[start:end]),
                token_counts=result.token_counts[start:end],
                model_version=result.model_version,
            ))
        start = end
