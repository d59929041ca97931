"""Classify: validation, per-input cache and computation (`gateway.scoring.runner`), labels best first.

No FastAPI here: errors are typed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.auth import Principal
from gateway.backends.base import ModelInfo
from gateway.cache.control import CacheMode
from gateway.cache.keys import CachedItem
from gateway.classify.compute import CACHE_PARAMS, classify_texts, labels_of, ranked_labels
from gateway.classify.protocol import ClassifyRequest
from gateway.errors import InvalidRequestError
from gateway.models.tasks import CLASSIFY
from gateway.rollout.service import Choice
from gateway.scoring.runner import ScoringRunner, check_texts


@dataclass(frozen=True, slots=True)
class ClassifyPolicy:
    """Request limits that come from settings."""

    max_items: int = 2048
    max_chars: int = 32_768


@dataclass(slots=True)
class ClassifyOutcome:
    """What the router needs: the response object, `x-cache`, backend time and tokens."""

    payload: dict[str, Any]
    cache: str
    backend_s: float | None
    tokens: int
    headers: dict[str, str] = field(default_factory=dict)


class ClassifyService:
    """Serves `/v1/classify` through the shared scoring runner."""

    def __init__(self, runner: ScoringRunner, policy: ClassifyPolicy) -> None:
        self.runner = runner
        self.policy = policy

    async def classify(self, request: ClassifyRequest, mode: CacheMode = CacheMode.DEFAULT,
                       principal: Principal | None = None, pin: str | None = None) -> ClassifyOutcome:
        """Every input's labels with scores, best first (`top_k` of them); `usage` counts the tokens read."""
        texts = [request.input] if isinstance(request.input, str) else request.input
        if len(texts) > self.policy.max_items:
            raise InvalidRequestError(
                f"'input' holds {len(texts)} items; at most {self.policy.max_items} are allowed per request",
                param="input", code="too_many_inputs")
        check_texts(texts, "input", self.policy.max_chars)
        info = await self.runner.model(request.model, CLASSIFY)

        async def compute(info: ModelInfo, choice: Choice, indices: list[int]) -> list[CachedItem]:
            return await classify_texts(self.runner.backend, info.name, choice.backend_version,
                                        [texts[i] for i in indices])

        scored = await self.runner.run(info, CLASSIFY, CACHE_PARAMS, texts, compute, mode=mode, principal=principal,
                                       pin=pin)
        labels = labels_of(scored.info, len(scored.items[0].array()))
        data = [{"index": i, "labels": ranked_labels(item, labels, request.top_k)}
                for i, item in enumerate(scored.items)]
        payload = {"object": "list", "data": data, "model": request.model,
                   "usage": {"prompt_tokens": scored.tokens, "total_tokens": scored.tokens}}
        return ClassifyOutcome(payload, scored.cache, scored.backend_s, scored.tokens, scored.headers)
