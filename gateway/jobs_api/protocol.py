"""Wire models of `POST /v1/jobs` and the job object.

A JSON body names the `type`: `embeddings` (`model`, and `input` — strings — or `documents` — `{id, text}`;
optional `chunking {max_tokens, overlap}` and `encoding_format`) or `chat` (`requests`: `{custom_id, body}`
with `body` a non-stream chat-completion request). Both take an optional `webhook {url, secret}` and
`metadata` (≤ 16 string pairs). A JSONL upload (`Content-Type: application/x-ndjson`) carries the items, one
per line (a document, a bare string, or a chat request), with the rest as query parameters
(see `gateway.jobs_api.router`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.chat.protocol import ChatCompletionRequest


class Document(BaseModel):
    """One document of an embeddings job; `id` is echoed as `document_id` in the results."""

    model_config = ConfigDict(extra="forbid")

    id: str | int
    text: str = Field(min_length=1)


class Chunking(BaseModel):
    """Token windows: `max_tokens` per chunk (special tokens excluded) advancing by `max_tokens - overlap`."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(ge=8, le=8192)
    overlap: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _overlap_smaller(self) -> Chunking:
        if self.overlap >= self.max_tokens:
            raise ValueError("'overlap' must be smaller than 'max_tokens'")
        return self


class Webhook(BaseModel):
    """Where to POST the job object when the job ends; `secret` keys the HMAC (one is generated if absent)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048)
    secret: str | None = Field(default=None, min_length=16, max_length=256)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError("'url' must be an absolute http(s) URL")
        return value


class _JobBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    webhook: Webhook | None = None
    metadata: dict[str, str] | None = Field(default=None, max_length=16)


class EmbeddingsJobRequest(_JobBase):
    """An embeddings job."""

    type: Literal["embeddings"]
    model: str = Field(min_length=1, max_length=256)
    input: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    documents: list[Document] | None = Field(default=None, min_length=1)
    chunking: Chunking | None = None
    encoding_format: Literal["float", "base64"] = "float"

    @model_validator(mode="after")
    def _one_input(self) -> EmbeddingsJobRequest:
        if (self.input is None) == (self.documents is None):
            raise ValueError("give exactly one of 'input' (strings) or 'documents' ({id, text})")
        return self

    def document_list(self) -> list[Document]:
        """The documents (plain strings get their index as id)."""
        if self.documents is not None:
            return self.documents
        return [Document(id=i, text=text) for i, text in enumerate(self.input or [])]


class ChatJobItem(BaseModel):
    """One request of a chat job."""

    model_config = ConfigDict(extra="forbid")

    custom_id: str | None = Field(default=None, max_length=256)
    body: dict[str, Any]

    @field_validator("body")
    @classmethod
    def _chat_request(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value.get("stream"):
            raise ValueError("'stream' is not supported in chat jobs")
        ChatCompletionRequest.model_validate(value)
        return value


class ChatJobRequest(_JobBase):
    """A batch-chat job."""

    type: Literal["chat"]
    requests: list[ChatJobItem] = Field(min_length=1)


JobRequest = Annotated[EmbeddingsJobRequest | ChatJobRequest, Field(discriminator="type")]


class JobProgress(BaseModel):
    """Work items done / planned (chunks or chat requests); `total` is null until the worker planned the job."""

    done: int
    total: int | None
    failed: int


class JobObject(BaseModel):
    """The job object (documented here; built as a dict by `jobs.records.JobRecord.public`)."""

    id: str
    object: Literal["job"] = "job"
    type: Literal["embeddings", "chat"]
    model: str | None
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    created_at: float
    started_at: float | None
    finished_at: float | None
    cancel_requested_at: float | None
    input_items: int
    progress: JobProgress
    usage: dict[str, int]
    attempts: int
    error: dict[str, Any] | None
    result_url: str
    webhook: dict[str, Any] | None
    metadata: dict[str, str] | None
    webhook_secret: str | None = Field(default=None, description="Only in the 202 answer, when generated.")
