"""`POST /v1/embeddings` — thin: one dependency (authenticated, admitted, parsed), the service, the response.

One route, served and documented: a `DirectRoute` (`gateway.http.direct`), which FastAPI documents from the
handler's signature and `openapi_extra` (the body schema, the response model) and which is served without FastAPI's
per-request machinery, this being the hot route. Its one dependency, `EmbeddingsCall` (`gateway.deps`), validates
the body straight from bytes with pydantic-core. Errors are raised as typed `GatewayError`s and rendered by the
app's exception handlers, as on every route. The app adds `route` to its routes itself, ahead of its routers.
"""

from __future__ import annotations

from fastapi import Depends
from starlette.responses import Response

from gateway.deps import EmbeddingsCall, embeddings_call
from gateway.embeddings.protocol import EmbeddingRequest, EmbeddingResponse
from gateway.http.direct import DirectRoute
from gateway.http.openapi import json_request_body
from gateway.http.responses import OrjsonResponse, dumps

PATH = "/v1/embeddings"


async def create_embeddings(call: EmbeddingsCall = Depends(embeddings_call)) -> Response:
    """Create embeddings (OpenAI contract); honours `Cache-Control: no-cache | no-store` and
    `x-tritonstack-model-version: N` (pin a model version); the served version comes back in that header."""
    outcome = await call.service.create(call.body, call.mode, call.principal, call.pin)
    call.record.served(call.body.model, outcome.backend_s, outcome.prompt_tokens)
    headers = {"x-cache": outcome.cache, **outcome.headers}
    return Response(dumps(outcome.payload), media_type="application/json", headers=headers)


route = DirectRoute(PATH, create_embeddings, methods=["POST"], name="create_embeddings", tags=["embeddings"],
                    response_model=EmbeddingResponse, response_class=OrjsonResponse,
                    openapi_extra=json_request_body(EmbeddingRequest.model_json_schema()))
