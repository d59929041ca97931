"""Group commit: concurrent submissions share one call (many rate-limit checks, cache claims or publishes in one
Redis round trip).

A submission made while no call is in flight is that call, made from the submitter's own task (no hand-off to a
task of the batch, no extra wake-up), so nothing waits at low load; the submissions that follow it go together in
one call of a task of their own (started at once beside a direct call, so a burst waits for no round trip), and
those made while that call is in flight form the next batch, sent as soon as it returns. Under load the number of
round trips per request therefore falls with concurrency, and no request waits longer than the call ahead of
it plus its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

I = TypeVar("I")  # noqa: E741 - item
R = TypeVar("R")


class GroupCommit(Generic[I, R]):
    """Calls `flush(items)` (one result per item, in order) for batches of concurrently submitted items.

    `flush` should not raise (return fallback results instead); if it does, every caller of that batch gets
    the exception. A caller that is cancelled while waiting does not cancel the batch it belongs to (a call made
    from the submitter's own task carries only its own item).
    """

    def __init__(self, flush: Callable[[list[I]], Awaitable[list[R]]], max_batch: int = 128) -> None:
        self._flush = flush
        self.max_batch = max_batch
        self._queue: list[tuple[I, asyncio.Future[R]]] = []
        self._runner: asyncio.Task[None] | None = None
        self._direct = False  # a call of one submission is in flight in its submitter's task

    async def submit(self, item: I) -> R:
        """The result for `item`: at once when no call is in flight, else in the next batch."""
        if self._runner is None and not self._direct:
            self._direct = True
            try:
                results = await self._flush([item])
                if len(results) != 1:
                    raise RuntimeError(f"flush returned {len(results)} results for 1 item")
                return results[0]
            finally:
                self._direct = False
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, fut))
        if self._runner is None:  # beside a direct call: the submissions of this loop turn go together, now
            self._runner = asyncio.ensure_future(self._drain())
        return await fut  # cancelling the caller cancels only its own future, never the batch

    async def _drain(self) -> None:
        batch: list[tuple[I, asyncio.Future[R]]] = []
        try:
            while self._queue:
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
                await self._run(batch)
                batch = []
        finally:
            self._runner = None
            leftovers, self._queue = batch + self._queue, []  # non-empty only when cancelled (shutdown)
            for _, fut in leftovers:
                fut.cancel()

    async def _run(self, batch: list[tuple[I, asyncio.Future[R]]]) -> None:
        try:
            results = await self._flush([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"flush returned {len(results)} results for {len(batch)} items")
        except Exception as exc:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, fut), result in zip(batch, results, strict=True):
            if not fut.done():
                fut.set_result(result)
