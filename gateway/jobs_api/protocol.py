"""Wire models of `POST /v1/jobs` and the job object.

A JSON body names the `type`: `embeddings` (`model`, and `input` — strings — or `documents` — `{id, text}`;
optional `chunking {max_tokens, overlap}` and `encoding_format`), `chat` (`requests`: `{custom_id, body}`
with `body` a non-stream chat-completion request), `rerank` (`model`, and `query` with `documents` — strings or
`{id, text}` — or `groups` of `{id, query, documents}`) or `classify` (`model`, `input` or `documents`, `top_k`).
All take an optional `webhook {url, secret}` and `metadata` (≤ 16 string pairs). A JSONL upload
(`Content-Type: application/x-ndjson`) carries the items, one per line (a document, a bare string, a chat request,
or a rerank group), with the rest as query parameters (see `gateway.jobs_api.router`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.chat.protocol import ChatCompletionRequest
from gateway.jobqueue.egress import malformed


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
    """Where to POST the job object when the job ends, and the secret that signs each delivery."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048, description=(
        "Absolute http(s) URL that receives `POST {\"event\": \"job.<status>\", \"job\": <job object>}` when the "
        "job ends. Redirects are not followed. Loopback, private and link-local addresses are refused (400, "
        "`webhook_url_not_allowed`) unless the deployment sets TRITONSTACK_WEBHOOK_ALLOW_PRIVATE=true."))
    secret: str | None = Field(default=None, min_length=16, max_length=256, description=(
        "Signs every delivery: the `X-Tritonstack-Signature` header is `sha256=` followed by the hex "
        "HMAC-SHA256 of the exact request body bytes, keyed by this secret (UTF-8). A receiver recomputes it "
        "over the raw body it received and compares in constant time (e.g. Python's `hmac.compare_digest`). "
        "When omitted, one is generated (`whsec_…`) and returned once, as `webhook_secret` in the 202 answer; "
        "the secret is never shown again (not in GET /v1/jobs/{id}, nor in webhook bodies)."))

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if (problem := malformed(value)) is not None:
            raise ValueError(problem)
        return value


class _JobBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    webhook: Webhook | None = None
    metadata: dict[str, str] | None = Field(default=None, max_length=16)


class _TextsJob(_JobBase):
    """A job over texts: strings (`input`) or documents (`{id, text}`), exactly one of them."""

    input: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    documents: list[Document] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_input(self) -> _TextsJob:
        if (self.input is None) == (self.documents is None):
            raise ValueError("give exactly one of 'input' (strings) or 'documents' ({id, text})")
        return self

    def document_list(self) -> list[Document]:
        """The documents (plain strings get their index as id)."""
        if self.documents is not None:
            return self.documents
        return [Document(id=i, text=text) for i, text in enumerate(self.input or [])]


class EmbeddingsJobRequest(_TextsJob):
    """An embeddings job."""

    type: Literal["embeddings"]
    model: str = Field(min_length=1, max_length=256)
    chunking: Chunking | None = None
    encoding_format: Literal["float", "base64"] = "float"


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


class RerankGroup(BaseModel):
    """One query and the documents to score against it; `id` is echoed as `query_id` (default: its index)."""

    model_config = ConfigDict(extra="forbid")

    id: str | int | None = None
    query: str = Field(min_length=1)
    documents: list[Annotated[str, Field(min_length=1)] | Document] = Field(min_length=1)


class RerankJobRequest(_JobBase):
    """A rerank job: one `query` with its `documents`, or several `groups` of them; strings or `{id, text}`."""

    type: Literal["rerank"]
    model: str = Field(min_length=1, max_length=256)
    query: str | None = Field(default=None, min_length=1)
    documents: list[Annotated[str, Field(min_length=1)] | Document] | None = Field(default=None, min_length=1)
    groups: list[RerankGroup] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_input(self) -> RerankJobRequest:
        single = self.query is not None or self.documents is not None
        if single == (self.groups is not None) or (single and (self.query is None or self.documents is None)):
            raise ValueError("give either 'query' and 'documents', or 'groups' ([{id, query, documents}])")
        return self

    def group_list(self) -> list[RerankGroup]:
        """The groups (a single query is group 0)."""
        if self.groups is not None:
            return self.groups
        return [RerankGroup(id=0, query=self.query or "", documents=self.documents or [])]


class ClassifyJobRequest(_TextsJob):
    """A classify job: strings (`input`) or documents (`{id, text}`), `top_k` labels per text (default all)."""

    type: Literal["classify"]
    model: str = Field(min_length=1, max_length=256)
    top_k: int | None = Field(default=None, ge=1)


JobRequest = Annotated[EmbeddingsJobRequest | ChatJobRequest | RerankJobRequest | ClassifyJobRequest,
                       Field(discriminator="type")]


class JobProgress(BaseModel):
    """Work items done / planned (chunks or chat requests); `total` is null until the worker planned the job."""

    done: int
    total: int | None
    failed: int


class JobWebhook(BaseModel):
    """A job's webhook delivery state (never its secret)."""

    url: str
    status: Literal["pending", "retrying", "delivered", "failed"] | None = Field(description=(
        "null while the job runs; `pending` once it ended, `retrying` between attempts, then `delivered` or "
        "`failed` (attempts used up, or the URL refused by the deployment's webhook policy)."))
    attempts: int = Field(description="Delivery attempts made so far.")
    delivered: bool = Field(description="True once a delivery was answered with a 2xx status.")
    last_error: str | None = Field(description=(
        "Why the latest failed attempt failed (e.g. `HTTP 500`, a connection error, a policy refusal naming "
        "the setting to change); null when no attempt failed. Kept after a later attempt succeeds."))


class JobObject(BaseModel):
    """The job object (documented here; built as a dict by `gateway.jobqueue.records.JobRecord.public`)."""

    id: str
    object: Literal["job"] = "job"
    type: Literal["embeddings", "chat", "rerank", "classify"]
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
    webhook: JobWebhook | None
    metadata: dict[str, str] | None
    webhook_secret: str | None = Field(default=None, description="Only in the 202 answer, when generated.")
