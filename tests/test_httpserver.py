"""The gateway's uvicorn protocol: a response's writes leave together, at the end of the loop iteration.

The end-to-end behaviour (every gateway test, streaming included) runs through this protocol
(`tests/fixtures/gateway.py`); this checks the transport wrapper itself against asyncio's transport contract.
"""

from __future__ import annotations

import asyncio

from gateway.http.server import CoalescingTransport


class Recording(asyncio.Transport):
    """An asyncio transport that records what reaches it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 1234) if name == "peername" else default


async def test_writes_of_one_iteration_leave_in_one_write_in_order() -> None:
    real = Recording()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.writelines([b"{", b"}"])
    assert real.writes == []  # held until the iteration ends
    await asyncio.sleep(0)
    assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\n{}"]
    transport.write(b"next")  # a later iteration's chunk (a streamed response) leaves on its own
    await asyncio.sleep(0)
    assert real.writes[-1] == b"next" and len(real.writes) == 2
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1234)  # the rest is the real transport's


async def test_close_sends_what_is_held_and_abort_drops_it() -> None:
    real = Recording()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(b"last words")
    transport.close()
    assert real.writes == [b"last words"] and real.closed
    await asyncio.sleep(0)  # the scheduled flush finds nothing left
    assert real.writes == [b"last words"]

    gone = Recording()
    aborted = CoalescingTransport(gone, asyncio.get_running_loop())
    aborted.write(b"never sent")
    aborted.abort()
    await asyncio.sleep(0)
    assert gone.writes == [] and gone.aborted
