"""A stream that ended with its final response is left to close by itself: cancelling it after the final response
leaves memory behind in Triton's server process (docs/RELIABILITY.md, the streaming soak). `_ended` decides."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from gateway.backends.triton_grpc import _ended


class Stream:
    """A response stream whose next step is to end, hang, or answer once more."""

    def __init__(self, then: str) -> None:
        self.then = then

    def __aiter__(self) -> AsyncIterator[object]:
        return self

    async def __anext__(self) -> object:
        if self.then == "end":
            raise StopAsyncIteration
        if self.then == "hang":
            await asyncio.sleep(10)
        return object()


async def test_a_stream_that_closes_after_its_final_response_needs_no_cancel() -> None:
    assert await _ended(Stream("end"))


async def test_a_stream_that_stays_open_or_answers_again_is_cancelled() -> None:
    assert not await _ended(Stream("hang"), timeout_s=0.05)
    assert not await _ended(Stream("more"))
