"""`POST /v1/rerank` (Cohere's and Jina's request, Cohere's answer; also at `/v2/rerank`, where Cohere's v2 SDK
posts) and `POST /rerank` (TEI's) — thin: one dependency (authenticated, admitted, parsed), the service, the
response with `x-cache` and the served version."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from starlette.responses import Response

from gateway.deps import TaskCall, rerank_call, tei_rerank_call
from gateway.http.openapi import json_request_body
from gateway.http.responses import OrjsonResponse, dumps
from gateway.rerank.protocol import RerankRequest, RerankResponse, TeiRank, TeiRerankRequest
from gateway.rerank.service import RerankOutcome, RerankService

router = APIRouter(tags=["rerank"])


def _response(call: TaskCall, outcome: RerankOutcome) -> Response:
    call.record.served(outcome.model, outcome.backend_s, outcome.tokens)
    return Response(dumps(outcome.payload), media_type="application/json",
                    headers={"x-cache": outcome.cache, **outcome.headers})


@router.post("/v1/rerank", response_model=RerankResponse, response_class=OrjsonResponse,
             openapi_extra=json_request_body(RerankRequest.model_json_schema()))
async def rerank(call: TaskCall[RerankRequest, RerankService] = Depends(rerank_call)) -> Response:
    """Rerank documents for a query (Cohere's shape; Jina's request too); honours `Cache-Control: no-cache |
    no-store` and `x-tritonstack-model-version: N`."""
    outcome = await call.service.rerank(call.body, call.mode, call.principal, call.pin, call.record.request_id)
    return _response(call, outcome)


@router.post("/v2/rerank", response_model=RerankResponse, response_class=OrjsonResponse,
             openapi_extra=json_request_body(RerankRequest.model_json_schema()))
async def rerank_v2(call: TaskCall[RerankRequest, RerankService] = Depends(rerank_call)) -> Response:
    """`POST /v1/rerank` where the Cohere v2 SDK (`cohere.ClientV2`) sends it; being under `/v2`, its errors take
    KServe's shape `{"error": "<message>"}`."""
    outcome = await call.service.rerank(call.body, call.mode, call.principal, call.pin, call.record.request_id,
                                        route="/v2/rerank")
    return _response(call, outcome)


@router.post("/rerank", response_model=list[TeiRank], response_class=OrjsonResponse,
             openapi_extra=json_request_body(TeiRerankRequest.model_json_schema()))
async def tei_rerank(call: TaskCall[TeiRerankRequest, RerankService] = Depends(tei_rerank_call)) -> Response:
    """Text Embeddings Inference's rerank route (`texts`, `raw_scores`, `return_text`); `model` may be omitted
    while exactly one rerank model is served."""
    return _response(call, await call.service.tei(call.body, call.mode, call.principal, call.pin))
