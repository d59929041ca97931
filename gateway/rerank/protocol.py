"""Wire models of `POST /v1/rerank` (what Cohere, Jina and TEI clients send) and TEI's `POST /rerank`.

`/v1/rerank` takes Cohere's request — v2 (`documents` as strings) and v1 (`documents` as objects, `rank_fields`,
`return_documents`) — which is also Jina's (`documents` as strings or `{"text": ...}`), and answers in Cohere's
shape, plus Jina's `model` and `usage`. `/rerank` takes TEI's (`query`, `texts`, `raw_scores`, `return_text`)
and answers TEI's list. Unknown fields are ignored (SDKs add new ones).
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator


class RerankRequest(BaseModel):
    """The body of `POST /v1/rerank`."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=256)
    query: str = Field(min_length=1, description="The search query.")
    documents: list[str | dict[str, Any]] = Field(min_length=1, description=(
        "Strings, or objects: their `text` field is ranked, or the fields named in `rank_fields`."))
    top_n: int | None = Field(default=None, ge=1, strict=True, description="Return the best N (default: all).")
    return_documents: bool = Field(default=False, description="Echo each document in its result.")
    rank_fields: list[str] | None = Field(default=None, min_length=1, description=(
        "For object documents: the fields to rank on (default `text`); several become `field: value` lines."))
    max_tokens_per_doc: int | None = Field(default=None, ge=1, description=(
        "Accepted for Cohere v2 clients; the model truncates each pair at its own window."))
    max_chunks_per_doc: int | None = Field(default=None, ge=1, description="Accepted for Cohere v1 clients.")

    @field_validator("documents")
    @classmethod
    def _echoable(cls, documents: list[str | dict[str, Any]]) -> list[str | dict[str, Any]]:
        """Objects are ranked and echoed as JSON: refuse what JSON output cannot hold (integers beyond 64 bits)."""
        for i, document in enumerate(documents):
            if isinstance(document, dict):
                try:
                    orjson.dumps(document)
                except orjson.JSONEncodeError:
                    raise ValueError(f"'documents[{i}]' holds a value that cannot be written back as JSON "
                                     "(an integer beyond 64 bits)") from None
        return documents


class RerankDocument(BaseModel):
    """A document as sent: `{"text": ...}` for a string, the object itself for an object."""

    model_config = ConfigDict(extra="allow")

    text: str | None = None


class RerankResult(BaseModel):
    """One document's score; `index` is its position in the request."""

    index: int
    relevance_score: float = Field(description="The model's `score` output: sigmoid of the logit, in [0, 1].")
    document: RerankDocument | None = Field(default=None, description="Only with `return_documents: true`.")


class ApiVersion(BaseModel):
    """Cohere's `meta.api_version`."""

    version: str


class BilledUnits(BaseModel):
    """Cohere's billing unit: one search per query and 100 documents."""

    search_units: int


class RerankTokens(BaseModel):
    """Tokens the model read (every (query, document) pair, special tokens included)."""

    input_tokens: int
    output_tokens: int


class RerankMeta(BaseModel):
    """Cohere's `meta`."""

    api_version: ApiVersion
    billed_units: BilledUnits
    tokens: RerankTokens


class RerankUsage(BaseModel):
    """Jina's `usage`."""

    total_tokens: int


class RerankResponse(BaseModel):
    """The response (Cohere's shape; `model` and `usage` as Jina's), results sorted by score, best first."""

    id: str
    results: list[RerankResult]
    meta: RerankMeta
    model: str
    usage: RerankUsage


class TeiRerankRequest(BaseModel):
    """The body of TEI's `POST /rerank`; `model` may be omitted while one rerank model is served."""

    model_config = ConfigDict(extra="ignore")

    query: str = Field(min_length=1)
    texts: list[str] = Field(min_length=1)
    model: str | None = Field(default=None, min_length=1, max_length=256)
    raw_scores: bool = Field(default=False, description="`score` is the logit instead of its sigmoid.")
    return_text: bool = False
    truncate: bool | None = Field(default=None, description="Accepted; the model truncates at its window.")
    truncation_direction: Literal["left", "right", "Left", "Right"] | None = None


class TeiRank(BaseModel):
    """One item of TEI's answer (sorted by score, best first)."""

    index: int
    score: float
    text: str | None = None
