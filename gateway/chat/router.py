"""`POST /v1/chat/completions`, and `GET /admin/deployments` + `GET /admin/usage` (admin scope) — thin.

The body is validated straight from bytes by pydantic-core (`parse_body`), as for embeddings.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.auth import Principal
from gateway.cache.control import parse_cache_control
from gateway.chat.protocol import ChatCompletion, ChatCompletionRequest
from gateway.chat.service import ChatService, ChatStream
from gateway.deps import ChatCall, chat_call, get_chat_service, require_admin
from gateway.errors import parse_body
from gateway.http.openapi import json_request_body
from gateway.http.responses import dumps

router = APIRouter(tags=["chat"])
admin = APIRouter(tags=["admin"])


_REQUEST_BODY = json_request_body(ChatCompletionRequest.model_json_schema())


class SSEResponse(StreamingResponse):
    """`text/event-stream` that always tells the stream it ended (even when it never started)."""

    def __init__(self, stream: ChatStream) -> None:
        super().__init__(stream.body, media_type="text/event-stream",
                         headers={"cache-control": "no-cache", "x-accel-buffering": "no", **stream.headers})
        self._close = stream.close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._close()


@router.post("/v1/chat/completions", response_model=ChatCompletion, response_class=Response,
             openapi_extra=_REQUEST_BODY)
async def create_chat_completion(request: Request, call: ChatCall = Depends(chat_call)) -> Response:
    """Chat completion (OpenAI contract), non-stream or SSE; `x-served-by` names the deployment."""
    body = parse_body(ChatCompletionRequest, await request.body())
    mode = parse_cache_control(request.headers.get("cache-control"))
    outcome = await call.service.create(body, call.principal, call.record.request_id, mode)
    if isinstance(outcome, ChatStream):
        call.record.served(body.model, None)  # a configured route: bounded label
        return SSEResponse(outcome)
    call.record.served(body.model, outcome.backend_s, outcome.tokens)
    return Response(dumps(outcome.payload), media_type="application/json", headers=outcome.headers)


@admin.get("/admin/deployments")
async def list_deployments(
    _: Principal = Depends(require_admin), service: ChatService = Depends(get_chat_service)
) -> dict[str, Any]:
    """Every deployment with its breaker state, load and price; every route with its deployments."""
    return await service.deployments()


@admin.get("/admin/usage")
async def usage(
    _: Principal = Depends(require_admin), service: ChatService = Depends(get_chat_service)
) -> dict[str, Any]:
    """Token and cost totals by API key and by model (Redis), and each key's budget for this period."""
    return await service.usage_report()
