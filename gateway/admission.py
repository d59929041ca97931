"""Admission control as pure ASGI middleware: an in-flight bound per process and a request-body size limit.

Policy (documented choice): beyond `max_in_flight` concurrent requests this process answers at once with
**503** `overloaded` and `retry-after` — the refusal is about server capacity, not the caller's quota, so the
SDKs' default retry with backoff is the right client reaction (a 429 is reserved for per-key rate limits).
Bodies larger than `max_body_bytes` get **413**: at once from `Content-Length`, or, for chunked uploads, as
soon as the streamed bytes pass the limit. Health, readiness and metrics routes bypass the in-flight bound so
probes keep answering under load.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import OverloadedError, PayloadTooLargeError, error_response
from gateway.metrics import GatewayMetrics
from gateway.middleware import header

_CONTENT_LENGTH = b"content-length"


def body_too_large(limit: int) -> str:
    """The 413 message."""
    return f"Request body exceeds the limit of {limit} bytes"


class AdmissionMiddleware:
    """Refuse fast instead of queueing without bound."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_in_flight: int,
        max_body_bytes: int,
        retry_after_s: int,
        metrics: GatewayMetrics,
        exempt_paths: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.max_body_bytes = max_body_bytes
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        self.exempt = frozenset(exempt_paths)
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        declared = header(scope, _CONTENT_LENGTH)
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            await self._refuse(scope, receive, send, PayloadTooLargeError(body_too_large(self.max_body_bytes)),
                               "body_too_large")
            return
        if self.in_flight >= self.max_in_flight:
            error = OverloadedError("This gateway process is at capacity; retry shortly",
                                    headers={"retry-after": str(self.retry_after_s)})
            await self._refuse(scope, receive, send, error, "in_flight")
            return
        # with a valid Content-Length the server enforces framing; count only chunked uploads
        wrapped = receive if declared is not None else self._counting(receive)
        self.in_flight += 1
        try:
            await self.app(scope, wrapped, send)
        finally:
            self.in_flight -= 1

    def _counting(self, receive: Receive) -> Receive:
        received = 0
        limit = self.max_body_bytes

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    self.metrics.rejected.labels("body_too_large").inc()
                    # FastAPI re-raises HTTPException from body reading; the handler maps 413 to the envelope
                    raise HTTPException(413, body_too_large(limit))
            return message

        return counting_receive

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, error: Exception, reason: str) -> None:
        self.metrics.rejected.labels(reason).inc()
        assert isinstance(error, (OverloadedError, PayloadTooLargeError))
        await error_response(error)(scope, receive, send)
