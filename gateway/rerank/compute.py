"""Scoring (query, document) pairs on a rerank model, and their cache keys; shared by `/v1/rerank` and the worker.

The model contract (config.pbtxt, `tritonstack_task: rerank`): inputs `query` and `document`, TYPE_STRING [1]
each, one pair per batch row; outputs `score` FP32 [1] (sigmoid of the logit), `logit` FP32 [1] and
`token_count` INT32 [1]. A pair's cached value is the float32 pair (score, logit) and its token count.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from gateway.backends.base import Backend
from gateway.cache.keys import CachedItem, make_keys

CACHE_PARAMS = "rerank:v1"
OUTPUTS = ("score", "logit", "token_count")


def pair_params(query: str) -> str:
    """The cache parameters of every pair of `query`: the query is part of each pair's key."""
    return json.dumps([CACHE_PARAMS, query])  # ASCII-escaped: a lone surrogate cannot break the key


def pair_keys(model: str, version: str, queries: Sequence[str], documents: Sequence[str]) -> list[str]:
    """The cache key of each (query, document) pair — the keys `/v1/rerank` uses."""
    keys: list[str] = [""] * len(documents)
    by_query: dict[str, list[int]] = {}
    for i, query in enumerate(queries):
        by_query.setdefault(query, []).append(i)
    for query, rows in by_query.items():
        for i, key in zip(rows, make_keys(model, version, pair_params(query), [documents[i] for i in rows]),
                          strict=True):
            keys[i] = key
    return keys


async def score_pairs(backend: Backend, model: str, version: str, queries: Sequence[str],
                      documents: Sequence[str]) -> list[CachedItem]:
    """One item per pair, (score, logit) and tokens, computed by `version` of `model` ("" = Triton's choice)."""
    result = await backend.infer_rows(model, {"query": queries, "document": documents}, OUTPUTS, version=version)
    pairs = np.stack([result.outputs["score"][:, 0], result.outputs["logit"][:, 0]], axis=1)
    tokens = result.outputs["token_count"][:, 0].tolist()
    return [CachedItem.from_array(row, count) for row, count in zip(pairs, tokens, strict=True)]


def score_and_logit(item: CachedItem) -> tuple[float, float]:
    """The (score, logit) of a pair's item."""
    values = item.array()
    return float(values[0]), float(values[1])


def ranking(items: Sequence[CachedItem]) -> list[tuple[int, float, float]]:
    """(index, score, logit) of each pair, best first: by logit (finer than the saturated sigmoid), then index."""
    scored = [(i, *score_and_logit(item)) for i, item in enumerate(items)]
    return sorted(scored, key=lambda row: (-row[2], row[0]))
