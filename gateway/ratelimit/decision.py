"""Rate-limit configuration (`Limits`) and the outcome of one check (`RateLimitDecision`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

RETRY_AFTER_MIN_S = 1
RETRY_AFTER_MAX_S = 60


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-identity budgets per minute; None means unlimited in that dimension."""

    requests_per_min: int | None = None
    tokens_per_min: int | None = None

    def __post_init__(self) -> None:
        for name in ("requests_per_min", "tokens_per_min"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")

    @property
    def unlimited(self) -> bool:
        return self.requests_per_min is None and self.tokens_per_min is None


def format_seconds(seconds: float) -> str:
    """Reset header value: seconds with an "s" suffix, rounded up to the millisecond ("1s", "0.25s")."""
    return f"{math.ceil(max(0.0, seconds) * 1000) / 1000:g}s"


def retry_after(seconds: float) -> int:
    """Whole seconds to wait, clamped to [1, 60]."""
    return min(RETRY_AFTER_MAX_S, max(RETRY_AFTER_MIN_S, math.ceil(seconds)))


@dataclass(frozen=True, slots=True)
class RateLimitDecision:
    """Whether a request may proceed, plus what the response headers should say.

    `reason` is None when allowed, else "requests" or "tokens" (budget exhausted) or "unavailable"
    (Redis unreachable and the limiter fails closed). `degraded` is True when Redis was not
    consulted (fail open or fail closed); degraded decisions carry no limit figures.
    """

    allowed: bool
    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None
    retry_after_s: int | None = None
    reason: str | None = None
    degraded: bool = False

    def headers(self) -> dict[str, str]:
        """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for limited dimensions, and
        ``retry-after`` when refused. Empty for an allowed degraded (fail-open) decision."""
        out: dict[str, str] = {}
        for kind, limit, remaining, reset in (
            ("requests", self.limit_requests, self.remaining_requests, self.reset_requests_s),
            ("tokens", self.limit_tokens, self.remaining_tokens, self.reset_tokens_s),
        ):
            if limit is None:
                continue
            out[f"x-ratelimit-limit-{kind}"] = str(limit)
            out[f"x-ratelimit-remaining-{kind}"] = str(max(0, remaining or 0))
            out[f"x-ratelimit-reset-{kind}"] = format_seconds(reset or 0.0)
        if not self.allowed and self.retry_after_s is not None:
            out["retry-after"] = str(self.retry_after_s)
        return out

    @property
    def message(self) -> str:
        """Human-readable reason for a refusal (for the OpenAI error envelope); "" when allowed."""
        if self.allowed:
            return ""
        if self.reason == "unavailable":
            return ("Rate limiting is unavailable (its Redis store cannot be reached) and the gateway "
                    "is configured to fail closed; retry shortly.")
        limit = self.limit_requests if self.reason == "requests" else self.limit_tokens
        return (f"Rate limit reached for {self.reason} per minute (limit {limit}). "
                f"Please retry after {self.retry_after_s}s.")
