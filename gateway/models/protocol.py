"""Wire models of `GET /v1/models` (the OpenAI contract, plus each model's `task`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Model(BaseModel):
    """One servable model."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    task: str | None = Field(default=None, description=(
        "What the model serves: `embed` (/v1/embeddings), `rerank` (/v1/rerank), `classify` (/v1/classify), "
        "`chat` (/v1/chat/completions); null for a model served on /v2 only."))


class ModelList(BaseModel):
    """Every model Triton reports READY."""

    object: Literal["list"] = "list"
    data: list[Model]
