"""Caches of recent prompts' KV rows, reused by prompts that start the same way (system prompt, earlier turns).

Shared by the served generation model (`llm_scheduler`) and the export's parity check; `llm_engine.Decoder` takes one
in `prefill`, `prefill_many` and `prefill_start`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any


class PrefixCache:
    """Caches of recent prompts (one unpadded row each), reused by prompts that share a prefix with them.

    Bounded by `max_tokens` cached token slots (least recently used entries go first); a prefix is reused from
    `min_tokens` tokens on, and never the prompt's last token (its logits are needed).
    """

    def __init__(self, max_tokens: int, min_tokens: int = 8) -> None:
        self.max_tokens, self.min_tokens = max_tokens, min_tokens
        self.entries: OrderedDict[tuple[int, ...], Any] = OrderedDict()  # llm_engine.KVSlots rows
        self.tokens = 0
        self.hits = 0
        self.reused_tokens = 0

    def lookup(self, token_ids: Sequence[int]) -> tuple[int, list[Any] | None]:
        """(tokens reused, views of their cache [1, heads, n, dim]) or (0, None)."""
        best, best_key = self._best(tuple(token_ids))
        if best_key is None:
            return 0, None
        self.entries.move_to_end(best_key)
        self.hits += 1
        self.reused_tokens += best
        return best, self.entries[best_key].prefix(best)

    def match(self, token_ids: Sequence[int]) -> int:
        """How many leading tokens of `token_ids` `lookup` would reuse (nothing copied, nothing counted)."""
        return self._best(tuple(token_ids))[0]

    def _best(self, ids: tuple[int, ...]) -> tuple[int, tuple[int, ...] | None]:
        best, best_key = 0, None
        for key in self.entries:
            n = _common_prefix(key, ids)
            if n > best:
                best, best_key = n, key
        best = min(best, len(ids) - 1)
        if best_key is None or best < self.min_tokens:
            return 0, None
        return best, best_key

    def store(self, token_ids: Sequence[int], row: Any) -> None:
        """Keep `row` (the cache of exactly `token_ids`), evicting the oldest entries beyond the budget."""
        key = tuple(token_ids)
        if len(key) > self.max_tokens or key in self.entries:
            return
        self.entries[key] = row
        self.tokens += len(key)
        while self.tokens > self.max_tokens:
            old, _ = self.entries.popitem(last=False)
            self.tokens -= len(old)


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
