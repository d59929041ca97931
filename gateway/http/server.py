"""uvicorn's httptools protocol, with a response's head and body leaving in one socket write.

uvicorn writes the status line and headers when the app sends `http.response.start`, and the body when it sends
`http.response.body`: two `send()` system calls per response, where one would do. On a cache hit that second call
is a measurable share of the gateway's CPU (docs/BENCHMARKS.md, "response write"). Here every write that the
protocol makes during one event-loop iteration is held and sent together at the end of that iteration: a
response sent in one go (any non-streaming one) costs one system call; a streamed response's chunks leave as soon
as the iteration that produced them ends, so nothing waits on a timer.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescingTransport:
    """A transport whose writes within one loop iteration go out as one `write` of the real transport."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._pending is None:
            self._pending = [data]
            self._loop.call_soon(self.flush)
        else:
            self._pending.append(data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Send what is held (called at the end of the iteration, and before closing)."""
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # everything else (is_closing, get_extra_info, pause_reading, …)
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` writing through a `CoalescingTransport` (pass as uvicorn's `http=`)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = CoalescingTransport(transport, self.loop)  # type: ignore[assignment]


def uvicorn_options(timeout_graceful_shutdown: int = 10) -> dict[str, Any]:
    """uvicorn's options for the gateway: `tritonstack gateway` and the in-thread servers of tests use these."""
    return {
        "loop": "uvloop",
        "http": CoalescingHttpToolsProtocol,
        "lifespan": "on",
        "access_log": False,
        "timeout_graceful_shutdown": timeout_graceful_shutdown,
    }
