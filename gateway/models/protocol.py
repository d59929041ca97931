"""Wire models of `GET /v1/models` (the OpenAI contract)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class Model(BaseModel):
    """One servable model."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    """Every model Triton reports READY."""

    object: Literal["list"] = "list"
    data: list[Model]
