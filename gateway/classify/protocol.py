"""Wire models of `POST /v1/classify`: OpenAI-style `input` and `usage`, labels with scores per input.

`input` follows `/v1/embeddings`' policy (a non-empty string or array of them; token arrays refused); unknown
fields are ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.embeddings.protocol import text_input


class ClassifyRequest(BaseModel):
    """The request body."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=256)
    input: str | list[str] = Field(description="Text or array of texts to classify (non-empty).")
    top_k: int | None = Field(default=None, ge=1, strict=True, description=(
        "Labels per input, best first (default: every label)."))
    user: str | None = Field(default=None, max_length=256)

    @field_validator("input", mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        return text_input(value)


class LabelScore(BaseModel):
    """One label and the model's score for it (softmax or sigmoid, per the model's `problem_type`)."""

    label: str
    score: float


class Classification(BaseModel):
    """The labels of one input, best first; `index` is its position in `input`."""

    index: int
    labels: list[LabelScore]


class ClassifyUsage(BaseModel):
    """Tokens the model read (special tokens included)."""

    prompt_tokens: int
    total_tokens: int


class ClassifyResponse(BaseModel):
    """The response body (documented here; serialized directly with orjson by the service)."""

    object: Literal["list"] = "list"
    data: list[Classification]
    model: str
    usage: ClassifyUsage
