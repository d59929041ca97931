"""Bounded in-process LRU with a per-entry time-to-live (the cache's L1)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

V = TypeVar("V")


class LRUCache(Generic[V]):
    """At most `max_items` entries; least recently used evicted first; entries expire after `ttl_s`.

    Not thread-safe: meant for one asyncio event loop. `max_items == 0` disables it.
    """

    def __init__(self, max_items: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if max_items < 0:
            raise ValueError("max_items must be >= 0")
        self.max_items = max_items
        self.ttl_s = ttl_s
        self._clock = clock
        self._data: OrderedDict[str, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> V | None:
        """The live value for `key` (marking it recently used), or None."""
        entry = self._data.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= self._clock():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    def set(self, key: str, value: V) -> None:
        """Insert or refresh `key`, evicting the least recently used entries beyond the bound."""
        if self.max_items == 0:
            return
        self._data[key] = (self._clock() + self.ttl_s, value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_items:
            self._data.popitem(last=False)

    def delete_prefix(self, prefix: str) -> int:
        """Drop every entry whose key starts with `prefix`; returns how many were dropped."""
        doomed = [key for key in self._data if key.startswith(prefix)]
        self._delete(doomed)
        return len(doomed)

    def clear(self) -> None:
        self._data.clear()

    def _delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._data.pop(key, None)
