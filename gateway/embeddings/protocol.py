"""Wire models of `POST /v1/embeddings` (the OpenAI contract).

Length policy: an item may hold at most `max_input_chars` characters (a setting, 32,768 by default; longer →
400). Within that bound, text beyond the model's window (256 tokens for MiniLM) is truncated *by the model*,
and `usage` reports the tokens actually embedded. Empty strings are refused (400, as OpenAI does). Token-array
inputs (`list[int]`, `list[list[int]]`) are refused with a clear 400: the model tokenizes text itself.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

TOKEN_INPUT_MESSAGE = (
    "Token-array inputs are not supported by this server; send text ('input' as a string or an array of strings)"
)


def _is_token_array(value: Any) -> bool:
    if not isinstance(value, list) or not value:
        return False
    if all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        return True
    return all(isinstance(x, list) and all(isinstance(t, int) for t in x) for x in value)


def text_input(value: Any) -> Any:
    """An `input` of text: a non-empty string or a non-empty array of them (ValueError otherwise, token arrays
    refused with `TOKEN_INPUT_MESSAGE`); also the `input` of `/v1/classify`."""
    if isinstance(value, str):
        if not value:
            raise ValueError("'input' must be a non-empty string")
        return value
    if _is_token_array(value):
        raise ValueError(TOKEN_INPUT_MESSAGE)
    if isinstance(value, list):
        if not value:
            raise ValueError("'input' must be a non-empty array")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise ValueError(f"'input[{i}]' must be a string")
            if not item:
                raise ValueError(f"'input[{i}]' must be a non-empty string")
        return value
    raise ValueError("'input' must be a string or an array of strings")


class EmbeddingRequest(BaseModel):
    """The request body; unknown fields are ignored (SDKs may add new ones)."""

    model_config = ConfigDict(extra="ignore")

    input: str | list[str] = Field(description="Text or array of texts to embed (non-empty).")
    model: str = Field(min_length=1, max_length=256)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, strict=True)  # "384" or true: 400, not coerced
    user: str | None = Field(default=None, max_length=256)

    @field_validator("input", mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        return text_input(value)


class Embedding(BaseModel):
    """One embedding; a list of floats, or base64 of little-endian float32 bytes."""

    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    """Tokens the model actually embedded (after its own truncation)."""

    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    """The response body (documented here; serialized directly with orjson by the service)."""

    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage
