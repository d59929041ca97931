"""A cheap OTLP/HTTP sink for `bench gateway`'s tracing rows: reads each request's body, answers 200, decodes nothing.

A real collector decodes every export, which would take CPU from the gateway and Triton on the machine under
test; this one reads the bytes and counts them. `GET /stats` answers `{"requests": n, "bytes": n}`.
`python -m loadtest.bench.otlp_sink PORT` serves on 127.0.0.1:PORT (HTTP/1.1 keep-alive, Content-Length bodies,
which is what OpenTelemetry's OTLP/HTTP exporter sends).
"""

from __future__ import annotations

import asyncio
import sys

import orjson

_OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"


class Sink:
    """Counts of what was received."""

    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection until the peer closes it."""
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                length = next((int(line.split(":", 1)[1]) for line in lines
                               if line.lower().startswith("content-length:")), 0)
                if length:
                    await reader.readexactly(length)
                if lines[0].startswith("GET /stats"):
                    body = orjson.dumps({"requests": self.requests, "bytes": self.bytes})
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                                 + str(len(body)).encode() + b"\r\n\r\n" + body)
                else:
                    self.requests += 1
                    self.bytes += length
                    writer.write(_OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()


async def serve(port: int) -> None:
    """Serve until killed."""
    sink = Sink()
    server = await asyncio.start_server(sink.handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def argv(port: int) -> list[str]:
    """The command that serves the sink on `port`."""
    return [sys.executable, "-m", "loadtest.bench.otlp_sink", str(port)]


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
