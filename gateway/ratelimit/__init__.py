"""Per-identity rate limits (requests/min, tokens/min) shared across gateway processes via Redis."""

from gateway.ratelimit.decision import Limits, RateLimitDecision, format_seconds, retry_after
from gateway.ratelimit.limiter import KEY_PREFIX, RateLimiter, RateLimitHooks, async_storage_uri

__all__ = [
    "KEY_PREFIX",
    "Limits",
    "RateLimitDecision",
    "RateLimitHooks",
    "RateLimiter",
    "async_storage_uri",
    "format_seconds",
    "retry_after",
]
