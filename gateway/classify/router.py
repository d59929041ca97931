"""`POST /v1/classify` — thin: one dependency (authenticated, admitted, parsed), the service, the response with
`x-cache` and the served version."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from starlette.responses import Response

from gateway.classify.protocol import ClassifyRequest, ClassifyResponse
from gateway.classify.service import ClassifyService
from gateway.deps import TaskCall, classify_call
from gateway.http.openapi import json_request_body
from gateway.http.responses import OrjsonResponse, dumps

router = APIRouter(tags=["classify"])


@router.post("/v1/classify", response_model=ClassifyResponse, response_class=OrjsonResponse,
             openapi_extra=json_request_body(ClassifyRequest.model_json_schema()))
async def classify(call: TaskCall[ClassifyRequest, ClassifyService] = Depends(classify_call)) -> Response:
    """Classify texts: each input's labels with scores, best first (`top_k`); honours `Cache-Control:
    no-cache | no-store` and `x-tritonstack-model-version: N`."""
    outcome = await call.service.classify(call.body, call.mode, call.principal, call.pin)
    call.record.served(call.body.model, outcome.backend_s, outcome.tokens)
    return Response(dumps(outcome.payload), media_type="application/json",
                    headers={"x-cache": outcome.cache, **outcome.headers})
