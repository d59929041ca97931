"""Classifying texts on a classify model, its label names, ranking; shared by `/v1/classify` and the worker.

The model contract (config.pbtxt, `tritonstack_task: classify`): input `text` TYPE_STRING [1], one text per batch
row; outputs `scores` FP32 [num_labels] (softmax or sigmoid, per the `problem_type` parameter) and `token_count`
INT32 [1]; the `labels` parameter is a JSON array of the label names in id order. A text's cached value is its
float32 scores and its token count (label names are not cached: a new export is a new version, hence new keys).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from typing import Any

from gateway.backends.base import Backend, ModelInfo
from gateway.cache.keys import CachedItem, make_keys

log = logging.getLogger("gateway.classify")

CACHE_PARAMS = "classify:v1"
OUTPUTS = ("scores", "token_count")
LABELS_PARAM = "labels"


def text_keys(model: str, version: str, texts: Sequence[str]) -> list[str]:
    """The cache key of each text — the keys `/v1/classify` uses."""
    return make_keys(model, version, CACHE_PARAMS, texts)


async def classify_texts(backend: Backend, model: str, version: str, texts: Sequence[str]) -> list[CachedItem]:
    """One item per text, its scores and tokens, computed by `version` of `model` ("" = Triton's choice)."""
    result = await backend.infer_rows(model, {"text": texts}, OUTPUTS, version=version)
    tokens = result.outputs["token_count"][:, 0].tolist()
    return [CachedItem.from_array(row, count) for row, count in zip(result.outputs["scores"], tokens, strict=True)]


@functools.lru_cache(maxsize=256)
def _parse_labels(raw: str) -> tuple[str, ...]:
    try:
        names = json.loads(raw)
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        log.warning("ignoring a malformed %r parameter (want a JSON array of strings)", LABELS_PARAM)
        return ()
    return tuple(names)


def labels_of(info: ModelInfo, count: int) -> list[str]:
    """`count` label names: the model's `labels` parameter, `LABEL_<id>` (transformers' default) beyond it."""
    names = _parse_labels(info.extra.get(LABELS_PARAM, "[]"))
    return [names[i] if i < len(names) else f"LABEL_{i}" for i in range(count)]


def ranked_labels(item: CachedItem, labels: Sequence[str] | None, top_k: int | None) -> list[dict[str, Any]]:
    """`[{"label", "score"}]` best first (ties by label id), at most `top_k`; `labels` None → `LABEL_<id>`."""
    scores = item.array().tolist()
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:top_k]
    return [{"label": labels[i] if labels is not None and i < len(labels) else f"LABEL_{i}", "score": scores[i]}
            for i in order]
