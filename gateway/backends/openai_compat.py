"""An OpenAI-compatible chat endpoint (`POST {base_url}/chat/completions`) behind the `ChatBackend` interface.

The `httpx.AsyncClient` is shared by every cloud deployment and owned by the lifespan; this class only builds
requests on it. Streams are parsed as server-sent events (`data: {...}` lines, `data: [DONE]` last); a stream
that ends without `[DONE]` or breaks mid-way raises `UpstreamError("stream_broken")`.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from gateway.backends.chat import UpstreamError

_JSON = "application/json"


def parse_retry_after(headers: httpx.Headers) -> float | None:
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


def status_error(response: httpx.Response) -> UpstreamError:
    """An HTTP error status → UpstreamError with the reason the routing layer acts on."""
    status = response.status_code
    message = f"upstream answered HTTP {status}"
    if status == 429:
        return UpstreamError("rate_limited", message, status=status, retry_after_s=parse_retry_after(response.headers))
    if status >= 500:
        return UpstreamError("server_error", message, status=status, retry_after_s=parse_retry_after(response.headers))
    if status in (400, 413, 422):
        return UpstreamError("bad_request", _upstream_message(response) or message, status=status)
    if status == 404:
        return UpstreamError("not_found", message, status=status)
    return UpstreamError("client_error", message, status=status)


def _upstream_message(response: httpx.Response) -> str | None:
    """The `error.message` of an OpenAI envelope (a 400 is about the caller's own request), bounded."""
    try:
        error = orjson.loads(response.content).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    message = error.get("message") if isinstance(error, dict) else None
    return f"upstream rejected the request: {message[:500]}" if isinstance(message, str) else None


def _transport_error(exc: httpx.HTTPError, streaming: bool = False) -> UpstreamError:
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamError("timeout", "upstream timed out")
    if streaming and isinstance(exc, (httpx.ReadError, httpx.RemoteProtocolError)):
        return UpstreamError("stream_broken", "upstream stream broke")
    return UpstreamError("connection", f"upstream connection failed ({type(exc).__name__})")


def sse_data(line: str) -> str | None:
    """The payload of a `data:` line, or None for other SSE lines (comments, event names, blanks)."""
    if not line.startswith("data:"):
        return None
    return line[5:].strip()


class OpenAICompatBackend:
    """One OpenAI-compatible deployment on a shared HTTP client."""

    def __init__(self, client: httpx.AsyncClient, base_url: str, api_key: str | None) -> None:
        self._client = client
        self._url = f"{base_url.rstrip('/')}/chat/completions"
        self._headers = {"content-type": _JSON, "accept": _JSON}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"

    def _request(self, body: dict[str, Any], timeout_s: float) -> httpx.Request:
        return self._client.build_request("POST", self._url, content=orjson.dumps(body), headers=self._headers,
                                          timeout=httpx.Timeout(timeout_s))

    async def complete(self, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """POST the request; the parsed chat.completion object."""
        try:
            response = await self._client.send(self._request({**body, "stream": False}, timeout_s))
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from None
        if response.status_code >= 400:
            raise status_error(response)
        try:
            payload = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise UpstreamError("server_error", "upstream answered invalid JSON", status=response.status_code) from None
        if not isinstance(payload, dict) or not isinstance(payload.get("choices"), list) or not payload["choices"]:
            raise UpstreamError("server_error", "upstream answered without choices", status=response.status_code)
        return payload

    async def stream(self, body: dict[str, Any], timeout_s: float) -> AsyncIterator[dict[str, Any]]:
        """POST with `stream: true` (usage requested) and yield each chunk object."""
        request = self._request({**body, "stream": True, "stream_options": {"include_usage": True}}, timeout_s)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from None
        try:
            if response.status_code >= 400:
                await response.aread()
                raise status_error(response)
            async for chunk in self._chunks(response):
                yield chunk
        except httpx.HTTPError as exc:
            raise _transport_error(exc, streaming=True) from None
        finally:
            await response.aclose()

    @staticmethod
    async def _chunks(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
        async for line in response.aiter_lines():
            data = sse_data(line)
            if not data:
                continue
            if data == "[DONE]":
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
        """Nothing to release: the HTTP client belongs to the lifespan."""
