"""An OpenAI-compatible chat endpoint (`POST {base_url}/chat/completions`) behind the `ChatBackend` interface.

The HTTP client is one `aiohttp.ClientSession` shared by every cloud deployment, created and closed by the
lifespan; this class only issues requests on it. (aiohttp rather than httpx on this hot path: it adds less
per call, and httpx's connection pool scans every connection per request, which caps its call rate under
concurrency.)

Streams are parsed as server-sent events (`data: {...}` lines, `data: [DONE]` last); a stream that ends
without `[DONE]` or breaks mid-way raises `UpstreamError("stream_broken")`. Timeouts: `timeout_s` bounds a
whole non-stream call; for a stream it bounds connecting and each wait for the next line.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson

from gateway.backends.chat import UpstreamError

_JSON = "application/json"


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from `retry-after-ms`, `retry-after` (seconds or an HTTP date); None when absent."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(float(millis) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def status_error(status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
    """An HTTP error status → UpstreamError with the reason the routing layer acts on."""
    message = f"upstream answered HTTP {status}"
    if status == 429:
        return UpstreamError("rate_limited", message, status=status, retry_after_s=parse_retry_after(headers))
    if status >= 500:
        return UpstreamError("server_error", message, status=status, retry_after_s=parse_retry_after(headers))
    if status in (400, 413, 422):
        return UpstreamError("bad_request", upstream_message(body) or message, status=status)
    if status == 404:
        return UpstreamError("not_found", message, status=status)
    return UpstreamError("client_error", message, status=status)


def upstream_message(body: bytes) -> str | None:
    """The `error.message` of an OpenAI envelope (a 400 is about the caller's own request), bounded."""
    try:
        error = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    message = error.get("message") if isinstance(error, dict) else None
    return f"upstream rejected the request: {message[:500]}" if isinstance(message, str) else None


def transport_error(exc: BaseException, streaming: bool = False) -> UpstreamError:
    """A client-side failure → UpstreamError (timeout, connection, or a broken stream)."""
    if isinstance(exc, TimeoutError):
        return UpstreamError("timeout", "upstream timed out")
    if streaming and isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)):
        return UpstreamError("stream_broken", "upstream stream broke")
    return UpstreamError("connection", f"upstream connection failed ({type(exc).__name__})")


def sse_data(line: bytes) -> bytes | None:
    """The payload of a `data:` line, or None for other SSE lines (comments, event names, blanks)."""
    if not line.startswith(b"data:"):
        return None
    return line[5:].strip()


class OpenAICompatBackend:
    """One OpenAI-compatible deployment on the shared HTTP session."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, api_key: str | None) -> None:
        self._session = session
        self._url = f"{base_url.rstrip('/')}/chat/completions"
        self._headers = {"content-type": _JSON, "accept": _JSON}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"

    async def complete(self, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """POST the request; the parsed chat.completion object."""
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with self._session.post(self._url, data=orjson.dumps({**body, "stream": False}),
                                          headers=self._headers, timeout=timeout) as response:
                raw = await response.read()
                status, headers = response.status, response.headers
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_error(exc) from None
        if status >= 400:
            raise status_error(status, headers, raw)
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError("server_error", "upstream answered invalid JSON", status=status) from None
        if not isinstance(payload, dict) or not isinstance(payload.get("choices"), list) or not payload["choices"]:
            raise UpstreamError("server_error", "upstream answered without choices", status=status)
        return payload

    async def stream(self, body: dict[str, Any], timeout_s: float) -> AsyncIterator[dict[str, Any]]:
        """POST with `stream: true` (usage requested) and yield each chunk object."""
        data = orjson.dumps({**body, "stream": True, "stream_options": {"include_usage": True}})
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
        try:
            response = await self._session.post(self._url, data=data, headers=self._headers, timeout=timeout)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_error(exc) from None
        complete = False
        try:
            if response.status >= 400:
                raise status_error(response.status, response.headers, await response.read())
            async for chunk in self._chunks(response):
                yield chunk
            complete = True
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_error(exc, streaming=True) from None
        finally:
            # a finished stream's connection goes back to the pool (aiohttp closes it if unread bytes remain)
            response.release() if complete else response.close()

    @staticmethod
    async def _chunks(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
        async for line in response.content:
            data = sse_data(line)
            if not data:
                continue
            if data == b"[DONE]":
                return
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                raise UpstreamError("stream_broken", "upstream sent an invalid stream event") from None
            if isinstance(chunk, dict) and chunk.get("error"):
                raise UpstreamError("stream_broken", "upstream reported an error mid-stream")
            if isinstance(chunk, dict):
                yield chunk
        raise UpstreamError("stream_broken", "upstream stream ended before [DONE]")

    async def aclose(self) -> None:
        """Nothing to release: the HTTP session belongs to the lifespan."""
