"""KServe v2 passthrough to Triton's HTTP endpoint, body and binary-tensor framing untouched.

The request body and the headers that define it (`Content-Type`, `Inference-Header-Content-Length`,
`Content-Encoding`, `Accept-Encoding`) are forwarded as they are, so JSON and the binary tensor extension both
work; Triton's response (status, the same headers, raw possibly-compressed bytes) is sent back, read whole when
small (`BUFFER_LIMIT`; a streamed response costs per-response tasks in Starlette), streamed otherwise. Caller
credentials are not forwarded, and nothing is added: Triton compresses a response only when the caller asked
for it. No FastAPI here.

With several Triton servers (`TritonPool`), each request goes to the HTTP address paired with the gRPC endpoint
the pool chooses (same index in the settings' lists); a connection failure ejects that endpoint and the request
is sent once more to another healthy one (every forwarded request is a read or an idempotent inference).

The client is the `aiohttp.ClientSession` the lifespan creates (`triton_http_session`), shared with the Triton
backend's HTTP transport: aiohttp rather than httpx, which costs more client CPU per request (its pool scans every
connection per request).
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

import aiohttp

from gateway.backends.base import Backend, valid_model_name
from gateway.backends.pool import TritonPool
from gateway.errors import BackendTimeoutError, BackendUnavailableError, GatewayError, NotFoundError
from gateway.rollout.service import Choice, RolloutService, choose_version, with_pinned
from gateway.tracing import client_span, sampled_headers

FORWARD_REQUEST_HEADERS = ("content-type", "inference-header-content-length", "content-encoding",
                           "accept-encoding")
FORWARD_RESPONSE_HEADERS = ("content-type", "inference-header-content-length", "content-encoding",
                            "content-length")
# responses up to this size are read whole and sent as one plain response; larger ones are streamed through
BUFFER_LIMIT = 1 << 20
_VERSION = re.compile(r"^[0-9]{1,19}$")


def model_path(model: str, version: str | None, suffix: str = "") -> str:
    """`/v2/models/{model}[/versions/{version}]{suffix}`, after validating both names (404 otherwise)."""
    if not valid_model_name(model):
        raise NotFoundError(f"Unknown model '{model}'", param="model", code="model_not_found")
    path = f"/v2/models/{model}"
    if version is not None:
        if not _VERSION.match(version):
            raise NotFoundError(f"Unknown version '{version}' of model '{model}'", param="version",
                                code="model_not_found")
        path += f"/versions/{version}"
    return path + suffix


async def routed_version(rollouts: RolloutService | None, backend: Backend, model: str, identity: str,
                         pin: str | None) -> Choice | None:
    """The version an unversioned inference of `model` goes to, as `/v1/embeddings` would choose it: pinned by
    `x-tritonstack-model-version`, else the rollout table's (sticky per caller), else the oldest ready version
    (`default_choice`). None — Triton's own choice — for a model without a rollout or pin whose metadata cannot
    be had (unknown, Triton down): Triton's own answer is relayed then."""
    try:
        info = await with_pinned(backend, await backend.model_info(model), pin)
    except GatewayError:
        if pin is None and (rollouts is None or rollouts.rollout(model) is None):
            return None
        raise
    choice = choose_version(rollouts, model, identity, info.versions, info.version, pin)
    if rollouts is not None:
        rollouts.metrics.served(model, choice)
    return choice if choice.backend_version else None


@dataclass
class ProxiedResponse:
    """Triton's answer: status, the headers we pass on, and the raw body — read whole (`content`) when its
    Content-Length is at most `BUFFER_LIMIT`, else a stream (`body`; call `aclose` when done)."""

    status: int
    headers: dict[str, str]
    content: bytes | None
    upstream: aiohttp.ClientResponse
    elapsed_s: float

    @property
    def body(self) -> AsyncIterator[bytes]:
        """The raw body as it arrives."""
        return self.upstream.content.iter_any()

    async def aclose(self) -> None:
        """Release the upstream connection (back to the pool once the body was read)."""
        self.upstream.release()


async def _read(upstream: aiohttp.ClientResponse) -> bytes:
    """The whole (small) body; the connection goes back to the pool."""
    try:
        return await upstream.read()
    except TimeoutError:
        raise BackendTimeoutError("The inference server did not answer in time") from None
    except aiohttp.ClientError:
        raise BackendUnavailableError("The inference server is unavailable") from None
    finally:
        upstream.release()


class KServeProxy:
    """Forwards KServe v2 requests to a Triton HTTP endpoint (`host:port`), or to one of several paired with a
    `TritonPool`'s gRPC endpoints (`addresses[i]` is the HTTP address of `pool.endpoints[i]`)."""

    def __init__(self, session: aiohttp.ClientSession, addresses: str | Sequence[str],
                 pool: TritonPool | None = None) -> None:
        addresses = [addresses] if isinstance(addresses, str) else list(addresses)
        if pool is not None and len(addresses) != len(pool.endpoints):
            raise ValueError("one HTTP address per Triton gRPC endpoint is needed")
        self.session = session
        self.base_urls = [f"http://{a}" for a in addresses]
        self.base_url = self.base_urls[0]
        self._pool = pool

    async def forward(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes | None = None
    ) -> ProxiedResponse:
        """Send one request upstream; BackendUnavailable/BackendTimeout when Triton does not answer."""
        sent = {k: v for k in FORWARD_REQUEST_HEADERS if (v := headers.get(k)) is not None}
        started = time.perf_counter()
        with client_span(f"triton {method}", {"http.request.method": method, "url.path": path}) as span:
            sent.update(sampled_headers() or {})  # Triton continues a sampled trace (its own spans under this)
            if self._pool is None:
                upstream = await self._open(self.base_url, method, path, sent, body)
            else:
                upstream = await self._pool.run(
                    lambda ep: self._open(self.base_urls[ep.index], method, path, sent, body))
            if span is not None:
                span.set_attribute("http.response.status_code", upstream.status)
        kept = {k: v for k in FORWARD_RESPONSE_HEADERS if (v := upstream.headers.get(k)) is not None}
        elapsed = time.perf_counter() - started  # until Triton's headers: the backend's share
        length = kept.get("content-length", "")
        content = await _read(upstream) if length.isdigit() and int(length) <= BUFFER_LIMIT else None
        return ProxiedResponse(upstream.status, kept, content, upstream, elapsed)

    async def _open(self, base_url: str, method: str, path: str, headers: dict[str, str],
                    body: bytes | None) -> aiohttp.ClientResponse:
        """Send the request; Triton's response once its headers arrived."""
        try:
            return await self.session.request(method, base_url + path, headers=headers, data=body)
        except TimeoutError:
            raise BackendTimeoutError("The inference server did not answer in time") from None
        except aiohttp.ClientError:
            raise BackendUnavailableError("The inference server is unavailable") from None

    async def aclose(self) -> None:
        """Close the session and its connections."""
        await self.session.close()
