"""Request context as pure ASGI middleware: request ids, per-request metrics, and the last-resort 500.

Each request gets one `RequestRecord` (`gateway.http.record`), created here with its request id: the
dependencies and routes fill in the model label, the backend time and the rate-limit headers, and this middleware
reads them back (the headers when the response starts, the labels when the request ends).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import InternalError, error_response
from gateway.http.record import RECORD_KEY, RequestRecord
from gateway.metrics import GatewayMetrics
from gateway.tracing import annotate, current_trace_id

log = logging.getLogger("gateway.requests")

REQUEST_ID_HEADER = b"x-request-id"
_SAFE_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")  # fullmatch: `$` would accept a trailing "\n"


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header `name` (lower-case bytes) in an ASGI scope."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


# generated ids: a random per-process prefix and a counter (unique, and no syscall per request)
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count()


def new_request_id() -> str:
    """A fresh 32-hex-character request id."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFFFFFF:016x}"


def request_id_from(value: bytes | None) -> str:
    """Keep a caller's id when it is short and made of safe characters; otherwise make a new one."""
    if value is not None and _SAFE_ID.fullmatch(value):
        return value.decode("ascii")
    return new_request_id()


def _encoded(headers: dict[str, str] | None) -> list[tuple[bytes, bytes]]:
    if not headers:
        return []
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


def route_label(scope: Scope) -> str:
    """The matched route template (bounded cardinality), or 'unmatched'."""
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class RequestContextMiddleware:
    """Outermost gateway middleware: request id in and out, metrics, and a 500 error for escapes."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(header(scope, REQUEST_ID_HEADER))
        record = scope[RECORD_KEY] = RequestRecord(request_id)
        annotate({"tritonstack.request_id": request_id})  # the server span's (FastAPI's, outside this middleware)
        rid = request_id.encode("ascii")
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER, rid),
                                      *_encoded(record.limit_headers)]
            await send(message)

        start = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error, request id %s, trace id %s", request_id, current_trace_id())
            status = 500
            if not started:
                response = error_response(InternalError("The server had an error processing the request"),
                                          path=scope["path"])
                await response(scope, receive, send_with_id)
        finally:
            self.metrics.in_flight.dec()
            self._observe(scope, record, status, time.perf_counter() - start)

    def _observe(self, scope: Scope, record: RequestRecord, status: int, elapsed: float) -> None:
        route = route_label(scope)
        model = record.model
        m = self.metrics
        m.child(m.requests, route, scope["method"], model, str(status)).inc()
        m.child(m.latency, route, model).observe(elapsed)
        backend_s = record.backend_s
        if backend_s is not None and status < 400:
            m.child(m.overhead, route).observe(max(elapsed - backend_s, 0.0))
