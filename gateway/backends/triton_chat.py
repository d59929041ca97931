"""A chat model served by the local Triton, behind the `ChatBackend` interface — the seam for the local-LLM work.

Until the local LLM lands, this backend only answers the routing layer honestly: a model Triton does not serve
is `not_found`, an unreachable or saturated Triton is `connection`/`overloaded`, and a loaded model answers
`unavailable` (chat generation over Triton is not wired yet). Each of these makes the router fall back to the
route's next deployment, or gives the client a clean 503 when there is none. The local-LLM issue replaces
`_generate`/`_generate_stream` (Triton's generate extension) and keeps everything else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from gateway.backends.base import Backend
from gateway.backends.chat import UpstreamError
from gateway.errors import BackendTimeoutError, BackendUnavailableError, GatewayError, NotFoundError


def _from_gateway_error(exc: GatewayError, model: str) -> UpstreamError:
    if isinstance(exc, NotFoundError):
        return UpstreamError("not_found", f"Triton does not serve the model '{model}'")
    if isinstance(exc, BackendTimeoutError):
        return UpstreamError("timeout", "Triton did not answer in time")
    if isinstance(exc, BackendUnavailableError) and exc.code == "backend_overloaded":
        return UpstreamError("overloaded", "Triton's queue is full", status=503)
    return UpstreamError("connection", "Triton is unreachable")


class TritonChatBackend:
    """A Triton model as a chat deployment (metadata through the gateway's Triton `Backend`)."""

    def __init__(self, models: Backend, model: str) -> None:
        self._models = models
        self.model = model

    async def _require_model(self) -> None:
        try:
            await self._models.model_info(self.model)
        except GatewayError as exc:
            raise _from_gateway_error(exc, self.model) from None

    async def complete(self, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Not served yet: `not_found` or `unavailable` (see module docstring)."""
        await self._require_model()
        return await self._generate(body, timeout_s)

    async def stream(self, body: dict[str, Any], timeout_s: float) -> AsyncIterator[dict[str, Any]]:
        """Not served yet: `not_found` or `unavailable` (see module docstring)."""
        await self._require_model()
        async for chunk in self._generate_stream(body, timeout_s):
            yield chunk

    async def _generate(self, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        raise UpstreamError("unavailable", f"chat generation on Triton model '{self.model}' is not available yet")

    async def _generate_stream(self, body: dict[str, Any], timeout_s: float) -> AsyncIterator[dict[str, Any]]:
        raise UpstreamError("unavailable", f"chat generation on Triton model '{self.model}' is not available yet")
        yield {}  # pragma: no cover - makes this an async generator

    async def aclose(self) -> None:
        """The Triton client belongs to the lifespan."""
