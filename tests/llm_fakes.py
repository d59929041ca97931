"""Stand-ins shared by the generation unit tests: a tokenizer with fixed pieces and KV slots whose values name
their rows."""

from __future__ import annotations

import numpy as np

from triton_models.llm_engine import KVSlots


class Pieces:
    """A stand-in tokenizer: token id i decodes to PIECES[i]."""

    PIECES = ("The", " capital", " is", " Par", "is", ".")

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(self.PIECES[i] for i in ids)


def slots(lengths: list[int], layers: int = 2) -> KVSlots:
    """Rows whose cached values name them: row r holds 100·(r + 1) + column in its first lengths[r] columns."""
    capacity = max(8, *lengths)
    cache = [np.zeros((len(lengths), 1, capacity, 1), dtype=np.float32) for _ in range(2 * layers)]
    for r, n in enumerate(lengths):
        for t in cache:
            t[r, 0, :n, 0] = 100 * (r + 1) + np.arange(n)
    return KVSlots(np.array(lengths, dtype=np.int64), cache)
