"""Admission control as pure ASGI middleware: an in-flight bound per process and a request-body size limit.

Policy (documented choice): beyond `max_in_flight` concurrent requests this process answers at once with
**503** `overloaded` and `retry-after` — the refusal is about server capacity, not the caller's quota, so the
SDKs' default retry with backoff is the right client reaction (a 429 is reserved for per-key rate limits).
Bodies larger than `max_body_bytes` get **413**: at once from `Content-Length`, or, for chunked uploads, as
soon as the streamed bytes pass the limit. A body sent to an OpenAI-style route (`POST /v1/...`) must declare
a JSON media type (`application/json`, `application/*+json`, or JSONL for job uploads): a missing, `text/plain`,
form or multipart `Content-Type` gets **415** before the body is read (the `/v2` passthrough is exempt: the
binary tensor extension is not JSON, and Triton judges its own bodies). Health, readiness and metrics routes
bypass the in-flight bound so probes keep answering under load.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import OverloadedError, PayloadTooLargeError, UnsupportedMediaTypeError, error_response
from gateway.metrics import GatewayMetrics
from gateway.middleware import header

_CONTENT_LENGTH = b"content-length"
_CONTENT_TYPE = b"content-type"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
JSON_PREFIXES = ("/v1/",)
JSONL_TYPES = (b"application/x-ndjson", b"application/jsonl", b"application/json-lines", b"application/x-jsonlines")


def json_media_type(content_type: bytes | None) -> bool:
    """True for `application/json`, `application/<x>+json` (any parameters) and the JSONL types."""
    media = (content_type or b"").split(b";", 1)[0].strip().lower()
    return media == b"application/json" or media in JSONL_TYPES or (
        media.startswith(b"application/") and media.endswith(b"+json"))


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
        json_prefixes: tuple[str, ...] = JSON_PREFIXES,
    ) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.max_body_bytes = max_body_bytes
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        self.exempt = frozenset(exempt_paths)
        self.json_prefixes = json_prefixes
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
        if (scope["method"] in _BODY_METHODS and scope["path"].startswith(self.json_prefixes)
                and not json_media_type(header(scope, _CONTENT_TYPE))):
            await self._refuse(scope, receive, send, UnsupportedMediaTypeError(
                "Content-Type must be application/json", param="Content-Type"), "media_type")
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
                    # FastAPI re-raises HTTPException from body reading; the handler maps 413 to the path's shape
                    raise HTTPException(413, body_too_large(limit))
            return message

        return counting_receive

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, error: Exception, reason: str) -> None:
        self.metrics.rejected.labels(reason).inc()
        assert isinstance(error, (OverloadedError, PayloadTooLargeError, UnsupportedMediaTypeError))
        await error_response(error, path=scope["path"])(scope, receive, send)
