"""`POST /v1/embeddings` — thin: parse, call the service, serialize."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from gateway.auth import Principal
from gateway.cache.control import parse_cache_control
from gateway.deps import get_embedding_service, rate_limited_principal
from gateway.embeddings.protocol import EmbeddingRequest, EmbeddingResponse
from gateway.embeddings.service import EmbeddingService
from gateway.limiting import spend_tokens
from gateway.responses import dumps

router = APIRouter(tags=["embeddings"])


@router.post("/v1/embeddings", response_model=EmbeddingResponse, response_class=Response)
async def create_embeddings(
    body: EmbeddingRequest,
    request: Request,
    principal: Principal = Depends(rate_limited_principal),
    service: EmbeddingService = Depends(get_embedding_service),
) -> Response:
    """Create embeddings (OpenAI contract); honours `Cache-Control: no-cache | no-store`."""
    mode = parse_cache_control(request.headers.get("cache-control"))
    outcome = await service.create(body, mode, principal)
    request.state.model = body.model
    request.state.backend_s = outcome.backend_s
    spend_tokens(getattr(request.state, "response_headers", {}), outcome.prompt_tokens)
    headers = {"x-cache": outcome.cache, **outcome.headers}
    return Response(dumps(outcome.payload), media_type="application/json", headers=headers)
