"""Rerank: documents → texts, per-pair cache and scoring (`gateway.scoring.runner`), ranking, the two answers.

A document is a string, or an object whose `text` field is ranked — or the fields named in `rank_fields`: one
field's value as it is, several as `field: value` lines (the YAML-like text Cohere recommends for structured
documents). Each (query, document text) pair is one cached item; results are sorted by the model's logit (the
`relevance_score` is its sigmoid), ties by index. No FastAPI here: errors are typed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.auth import Principal
from gateway.backends.base import ModelInfo
from gateway.cache.control import CacheMode
from gateway.cache.keys import CachedItem
from gateway.errors import InvalidRequestError
from gateway.models.tasks import RERANK
from gateway.rerank.compute import pair_params, ranking, score_pairs
from gateway.rerank.protocol import RerankRequest, TeiRerankRequest
from gateway.rollout.service import Choice
from gateway.scoring.runner import Scored, ScoringRunner, check_text, check_texts

API_VERSION = "2"  # the Cohere rerank API whose response shape this follows
DOCUMENTS_PER_SEARCH_UNIT = 100  # Cohere bills one search unit per query and 100 documents


@dataclass(frozen=True, slots=True)
class RerankPolicy:
    """Request limits that come from settings."""

    max_documents: int = 2048
    max_chars: int = 32_768


@dataclass(slots=True)
class RerankOutcome:
    """What the router needs: the response body, `x-cache`, backend time, tokens, the served model."""

    payload: Any
    model: str
    cache: str
    backend_s: float | None
    tokens: int
    headers: dict[str, str] = field(default_factory=dict)


def _field_text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def document_text(document: str | dict[str, Any], index: int, rank_fields: Sequence[str] | None) -> str:
    """The text ranked for one document (400 naming it when an object has none of the fields)."""
    if isinstance(document, str):
        return document
    fields = list(rank_fields) if rank_fields else ["text"]
    present = [name for name in fields if name in document]
    if not present:
        hint = "" if rank_fields else "; name the fields to rank in 'rank_fields'"
        raise InvalidRequestError(f"'documents[{index}]' has no field {' or '.join(map(repr, fields))}{hint}",
                                  param=f"documents.{index}", code="invalid_document")
    if len(fields) == 1:
        return _field_text(document[present[0]])
    return "\n".join(f"{name}: {_field_text(document[name])}" for name in present)


class RerankService:
    """Serves `/v1/rerank` and TEI's `/rerank` through the shared scoring runner."""

    def __init__(self, runner: ScoringRunner, policy: RerankPolicy) -> None:
        self.runner = runner
        self.policy = policy

    async def rerank(self, request: RerankRequest, mode: CacheMode = CacheMode.DEFAULT,
                     principal: Principal | None = None, pin: str | None = None, request_id: str = "",
                     route: str = "/v1/rerank") -> RerankOutcome:
        """Cohere's answer: `results` sorted best first (`top_n` of them), `meta`, Jina's `model` and `usage`."""
        texts = [document_text(d, i, request.rank_fields) for i, d in enumerate(request.documents)]
        scored = await self._score(request.model, request.query, texts, mode, principal, pin, route)
        results = []
        for index, score, _ in ranking(scored.items)[: request.top_n]:
            result: dict[str, Any] = {"index": index, "relevance_score": score}
            if request.return_documents:
                document = request.documents[index]
                result["document"] = {"text": document} if isinstance(document, str) else document
            results.append(result)
        payload = {
            "id": request_id,
            "results": results,
            "meta": {"api_version": {"version": API_VERSION},
                     "billed_units": {"search_units": math.ceil(len(texts) / DOCUMENTS_PER_SEARCH_UNIT)},
                     "tokens": {"input_tokens": scored.tokens, "output_tokens": 0}},
            "model": request.model,
            "usage": {"total_tokens": scored.tokens},
        }
        return RerankOutcome(payload, request.model, scored.cache, scored.backend_s, scored.tokens, scored.headers)

    async def tei(self, request: TeiRerankRequest, mode: CacheMode = CacheMode.DEFAULT,
                  principal: Principal | None = None, pin: str | None = None) -> RerankOutcome:
        """TEI's answer: `[{"index", "score", "text"?}]` sorted best first; `raw_scores` gives logits."""
        model = request.model or await self.runner.default_model(RERANK)
        scored = await self._score(model, request.query, request.texts, mode, principal, pin, "/rerank")
        ranks = []
        for index, score, logit in ranking(scored.items):
            rank: dict[str, Any] = {"index": index, "score": logit if request.raw_scores else score}
            if request.return_text:
                rank["text"] = request.texts[index]
            ranks.append(rank)
        return RerankOutcome(ranks, model, scored.cache, scored.backend_s, scored.tokens, scored.headers)

    async def _score(self, model: str, query: str, texts: list[str], mode: CacheMode, principal: Principal | None,
                     pin: str | None, route: str) -> Scored:
        param = "documents" if route.startswith("/v1") else "texts"
        if len(texts) > self.policy.max_documents:
            raise InvalidRequestError(
                f"'{param}' holds {len(texts)} items; at most {self.policy.max_documents} are allowed per request "
                "(rerank larger sets with a background job: docs/JOBS.md)", param=param, code="too_many_inputs")
        check_text(query, "query", self.policy.max_chars)
        check_texts(texts, param, self.policy.max_chars)
        info = await self.runner.model(model, RERANK, route)

        async def compute(info: ModelInfo, choice: Choice, indices: list[int]) -> list[CachedItem]:
            return await score_pairs(self.runner.backend, info.name, choice.backend_version, [query] * len(indices),
                                     [texts[i] for i in indices])

        return await self.runner.run(info, RERANK, pair_params(query), texts, compute, mode=mode,
                                     principal=principal, pin=pin)
