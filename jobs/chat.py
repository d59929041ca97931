"""The `chat` job: a list of chat-completion requests → the gateway's chat routing → one JSONL line each.

Input (stored by the gateway, each body already validated there): `{"requests": [{"custom_id", "body"}]}`.
Each request is one unit, `chat_concurrency` run at once, through the same `ChatService` as
`POST /v1/chat/completions` (routes, fallback, retries, breakers, answer cache, the owner key's budget),
non-stream. Result lines: `{"index", "custom_id", "response": <chat.completion>}` or `{"index",
"custom_id", "error": {"message", "type", "code", "status"}}`; an item's error does not fail the job.
A unit that was running when its worker died is sent upstream again by the next run (at least once upstream,
exactly once in the results).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from gateway.auth import Principal
from gateway.chat.protocol import ChatCompletionRequest
from gateway.chat.service import ChatOutcome, ChatService
from gateway.errors import GatewayError, error_kind
from gateway.http.responses import dumps
from gateway.jobqueue.records import JobRecord
from jobs.runner import JobFailedError, UnitResult, run_job
from jobs.runtime import Runtime


def _line(value: dict[str, Any]) -> bytes:
    return dumps(value) + b"\n"


@dataclass
class ChatWork:
    """A planned chat job: one unit per request."""

    service: ChatService
    record: JobRecord
    requests: list[dict[str, Any]]

    @property
    def units(self) -> int:
        """Number of requests."""
        return len(self.requests)

    async def run_unit(self, index: int) -> UnitResult:
        """Answer request `index` (an error becomes the item's line)."""
        item = self.requests[index]
        head = {"index": index, "custom_id": item.get("custom_id")}
        principal = Principal(name=self.record.owner_name, identity=self.record.owner, scopes=frozenset())
        try:
            request = ChatCompletionRequest.model_validate({**item["body"], "stream": False})
            outcome = await self.service.create(request, principal, f"{self.record.id}-{index}")
        except GatewayError as exc:
            kind = error_kind(exc)
            error = {"message": exc.message, "type": kind.type, "code": exc.code, "status": kind.status}
            return UnitResult(_line({**head, "error": error}), items=1, failed=1)
        assert isinstance(outcome, ChatOutcome)  # stream=False
        line = {**head, "served_by": outcome.headers.get("x-served-by"), "response": outcome.payload}
        return UnitResult(_line(line), items=1, tokens=outcome.tokens)


async def plan_chat(rt: Runtime, record: JobRecord, raw: bytes) -> ChatWork:
    """One unit per request (nothing to decide: the plan only records the total)."""
    if rt.chat is None:
        raise JobFailedError("chat jobs are not configured on the worker (no TRITONSTACK_GATEWAY_ROUTES_FILE)",
                        "chat_not_configured")
    requests = orjson.loads(raw)["requests"]
    if await rt.store.set_plan(record.id, {"total": len(requests), "units": len(requests)}) is None:
        raise JobFailedError("the job's record is gone", "job_missing")
    return ChatWork(rt.chat, record, requests)


async def chat(ctx: dict[str, Any], job_id: str) -> dict[str, Any]:
    """arq job: run or resume chat job `job_id`."""
    return await run_job(ctx["runtime"], job_id, ctx["job_try"], plan_chat)
