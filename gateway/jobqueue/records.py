"""The job record: what Redis holds about a job, and the public object the API and webhooks show.

A record is a Redis hash of strings. Timestamps are epoch milliseconds inside, epoch seconds (float, ms
precision) outside. `done`/`total` count work items: chunks for embedding jobs (known once the worker has
planned the job; `total` is null before), requests for chat jobs, (query, document) pairs for rerank jobs, texts
for classify jobs.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import orjson

TRACE_FIELDS = ("traceparent", "tracestate")


class JobStatus(enum.StrEnum):
    """Lifecycle: queued → running → succeeded | failed | cancelled (queued → cancelled too)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True once nothing will change the job any more."""
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class JobType(enum.StrEnum):
    """What a job does; also the arq function name that runs it."""

    EMBEDDINGS = "embeddings"
    CHAT = "chat"
    RERANK = "rerank"
    CLASSIFY = "classify"


def _int(value: bytes | None) -> int | None:
    return int(value) if value not in (None, b"") else None


def _json(value: bytes | None) -> Any:
    return orjson.loads(value) if value not in (None, b"") else None


def _seconds(ms: int | None) -> float | None:
    return round(ms / 1000.0, 3) if ms is not None else None


@dataclass(slots=True)
class JobRecord:
    """One job as stored (`from_hash`) — parameters, state, progress, plan and webhook."""

    id: str
    type: JobType
    owner: str
    owner_name: str
    status: JobStatus
    created_ms: int
    items: int
    model: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, str] | None = None
    started_ms: int | None = None
    finished_ms: int | None = None
    cancel_ms: int | None = None
    total: int | None = None
    done: int = 0
    failed: int = 0
    tokens: int = 0
    attempts: int = 0
    error: dict[str, Any] | None = None
    plan: dict[str, Any] | None = None
    result_ttl_s: int = 86_400
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_status: str | None = None
    webhook_attempts: int = 0
    webhook_last_error: str | None = None  # absent from records written before it existed: None
    trace: dict[str, str] = field(default_factory=dict)  # W3C `traceparent`/`tracestate` of the submitting request

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> JobRecord:
        """Parse HGETALL output."""
        g = raw.get
        plan = _json(g(b"plan"))
        return cls(
            id=g(b"id", b"").decode(), type=JobType(g(b"type", b"").decode()), owner=g(b"owner", b"").decode(),
            owner_name=g(b"owner_name", b"").decode(), status=JobStatus(g(b"status", b"").decode()),
            created_ms=int(g(b"created_ms", b"0")), items=int(g(b"items", b"0")),
            model=(g(b"model") or b"").decode() or None, params=_json(g(b"params")) or {},
            metadata=_json(g(b"metadata")), started_ms=_int(g(b"started_ms")), finished_ms=_int(g(b"finished_ms")),
            cancel_ms=_int(g(b"cancel_ms")), total=plan["total"] if plan else None, done=_int(g(b"done")) or 0,
            failed=_int(g(b"failed")) or 0, tokens=_int(g(b"tokens")) or 0, attempts=_int(g(b"attempts")) or 0,
            error=_json(g(b"error")), plan=plan, result_ttl_s=_int(g(b"result_ttl_s")) or 86_400,
            webhook_url=(g(b"webhook_url") or b"").decode() or None,
            webhook_secret=(g(b"webhook_secret") or b"").decode() or None,
            webhook_status=(g(b"webhook_status") or b"").decode() or None,
            webhook_attempts=_int(g(b"webhook_attempts")) or 0,
            webhook_last_error=(g(b"webhook_last_error") or b"").decode() or None,
            trace={name: value.decode() for name in TRACE_FIELDS if (value := g(name.encode()))},
        )

    def public(self) -> dict[str, Any]:
        """The job object of `GET /v1/jobs/{id}` and of webhook bodies (never the webhook secret)."""
        return {
            "id": self.id,
            "object": "job",
            "type": self.type.value,
            "model": self.model,
            "status": self.status.value,
            "created_at": _seconds(self.created_ms),
            "started_at": _seconds(self.started_ms),
            "finished_at": _seconds(self.finished_ms),
            "cancel_requested_at": _seconds(self.cancel_ms),
            "input_items": self.items,
            "progress": {"done": self.done, "total": self.total, "failed": self.failed},
            "usage": {"total_tokens": self.tokens} if self.type is JobType.CHAT
            else {"prompt_tokens": self.tokens, "total_tokens": self.tokens},
            "attempts": self.attempts,
            "error": self.error,
            "result_url": f"/v1/jobs/{self.id}/result",
            "webhook": self._webhook(),
            "metadata": self.metadata,
        }


    def _webhook(self) -> dict[str, Any] | None:
        """The delivery state (`gateway.jobs_api.protocol.JobWebhook`); the secret stays in the record."""
        if self.webhook_url is None:
            return None
        return {"url": self.webhook_url, "status": self.webhook_status, "attempts": self.webhook_attempts,
                "delivered": self.webhook_status == "delivered", "last_error": self.webhook_last_error}


def job_error(message: str, code: str) -> dict[str, str]:
    """The `error` object of a failed job."""
    return {"message": message, "code": code}
