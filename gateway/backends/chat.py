"""The chat backend interface: one upstream that completes or streams an OpenAI-shaped chat request.

Both kinds of deployment implement it: OpenAI-compatible cloud endpoints (`backends.openai_compat`) and local
Triton models (`backends.triton_chat`). The routing layer (`gateway.routing`) never looks past this interface.

Bodies are OpenAI chat-completion request objects that the gateway already prepared for this deployment
(upstream model name set, PII redacted where the route asks for it); results are OpenAI response objects
(`complete`) or chunk objects (`stream`). Every failure is an `UpstreamError` whose `reason` drives fallback,
retries and the circuit breaker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

# reasons, and what the routing layer does with them
RETRYABLE = frozenset({"connection", "timeout", "rate_limited", "server_error", "stream_broken", "unavailable"})
"""Worth another try (this deployment later, or the next one now)."""
NEUTRAL = frozenset({"overloaded", "bad_request"})
"""Not a sign of an unhealthy deployment: never counted by its circuit breaker."""


class UpstreamError(Exception):
    """One failed upstream call.

    `reason`: connection | timeout | rate_limited (429) | server_error (5xx) | overloaded (a local deployment's
    queue is full: overflow) | stream_broken (ended or failed before completion) | not_found (model unknown
    upstream) | client_error (401/403/404: the deployment is misconfigured) | bad_request (400/422: the
    request itself; not retried anywhere) | unavailable (the deployment cannot serve chat now).
    """

    def __init__(self, reason: str, message: str, *, status: int | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status
        self.retry_after_s = retry_after_s

    @property
    def retryable(self) -> bool:
        """Another attempt (elsewhere or later) may succeed."""
        return self.reason in RETRYABLE

    @property
    def counts_as_failure(self) -> bool:
        """Whether the circuit breaker should count it against the deployment."""
        return self.reason not in NEUTRAL

    def describe(self) -> str:
        """Short, client-safe description (no upstream body)."""
        return f"{self.reason.replace('_', ' ')} ({self.status})" if self.status else self.reason.replace("_", " ")


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Tokens an upstream reports (or the gateway estimates) for one call."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion."""
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def from_openai(cls, usage: Any) -> TokenUsage | None:
        """Parse an OpenAI `usage` object; None when absent or malformed."""
        if not isinstance(usage, dict):
            return None
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not isinstance(prompt, int) or not isinstance(completion, int):
            return None
        return cls(max(prompt, 0), max(completion, 0))


@runtime_checkable
class ChatBackend(Protocol):
    """An upstream that serves OpenAI-shaped chat completions."""

    async def complete(self, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """The upstream's chat.completion object for `body` (UpstreamError otherwise)."""
        ...

    def stream(self, body: dict[str, Any], timeout_s: float) -> AsyncIterator[dict[str, Any]]:
        """The upstream's chunk objects, in order, ending after the last one (`[DONE]` consumed).

        Raises UpstreamError (reason `stream_broken`, `timeout`, ...) when the stream fails or ends early;
        `timeout_s` bounds connecting and each wait for the next chunk.
        """
        ...

    async def aclose(self) -> None:
        """Release what the backend owns (shared clients are closed by their owner)."""
        ...
