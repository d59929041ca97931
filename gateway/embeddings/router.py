"""`POST /v1/embeddings` — thin: parse, call the service, serialize.

The body is validated straight from bytes by pydantic-core (`parse_body`), skipping FastAPI's generic body
machinery on the hot path; the OpenAPI schema still documents `EmbeddingRequest`.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from gateway.cache.control import parse_cache_control
from gateway.deps import EmbeddingsCall, embeddings_call
from gateway.embeddings.protocol import EmbeddingRequest, EmbeddingResponse
from gateway.errors import parse_body
from gateway.limiting import spend_tokens
from gateway.responses import dumps

router = APIRouter(tags=["embeddings"])

_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": EmbeddingRequest.model_json_schema()}},
    }
}


@router.post("/v1/embeddings", response_model=EmbeddingResponse, response_class=Response,
             openapi_extra=_REQUEST_BODY)
async def create_embeddings(request: Request, call: EmbeddingsCall = Depends(embeddings_call)) -> Response:
    """Create embeddings (OpenAI contract); honours `Cache-Control: no-cache | no-store`."""
    body = parse_body(EmbeddingRequest, await request.body())
    mode = parse_cache_control(request.headers.get("cache-control"))
    outcome = await call.service.create(body, mode, call.principal)
    request.state.model = body.model
    request.state.backend_s = outcome.backend_s
    spend_tokens(getattr(request.state, "response_headers", {}), outcome.prompt_tokens)
    headers = {"x-cache": outcome.cache, **outcome.headers}
    return Response(dumps(outcome.payload), media_type="application/json", headers=headers)
