"""Request `Cache-Control` handling and the `x-cache` response value."""

from __future__ import annotations

import enum


class CacheMode(enum.Enum):
    """How one request uses the cache.

    - DEFAULT: look up, store misses.
    - REFRESH (``no-cache`` or ``max-age=0``): skip the lookup, recompute, store the fresh result.
    - BYPASS (``no-store``): no lookup and no store.
    """

    DEFAULT = "default"
    REFRESH = "no-cache"
    BYPASS = "no-store"

    @property
    def lookup(self) -> bool:
        """Whether cached entries may be served."""
        return self is CacheMode.DEFAULT

    @property
    def store(self) -> bool:
        """Whether computed results may be written to the cache."""
        return self is not CacheMode.BYPASS


def parse_cache_control(header: str | None) -> CacheMode:
    """Map a request `Cache-Control` header to a `CacheMode`; ``no-store`` wins over ``no-cache``.

    Unknown directives are ignored; a missing or empty header is DEFAULT.
    """
    if not header:
        return CacheMode.DEFAULT
    directives = {part.strip().lower().replace(" ", "") for part in header.split(",")}
    if "no-store" in directives:
        return CacheMode.BYPASS
    if "no-cache" in directives or "max-age=0" in directives:
        return CacheMode.REFRESH
    return CacheMode.DEFAULT


def cache_status(hits: int, total: int) -> str:
    """The `x-cache` value: "hit" when every item was cached, "miss" when none was, else "partial"."""
    if total > 0 and hits >= total:
        return "hit"
    return "partial" if hits > 0 else "miss"
