"""KServe v2 routes (`tritonclient.http` pointed at the gateway works): thin wrappers over `KServeProxy`.

`/v2/health/{live,ready}` need no key (probes); everything else does, and inference counts against the
caller's request limit.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from gateway.auth import Principal
from gateway.deps import get_kserve_proxy, get_principal, rate_limited_principal
from gateway.errors import InvalidRequestError, NotFoundError
from gateway.kserve.service import KServeProxy, model_path

router = APIRouter(tags=["kserve"])  # full paths: the route template is the metrics label

MODEL_GET_ACTIONS = frozenset({"ready", "config", "stats"})


async def _relay(
    request: Request, proxy: KServeProxy, method: str, path: str, model: str | None = None,
    body: bytes | None = None,
) -> Response:
    upstream = await proxy.forward(method, path, request.headers, body)
    request.state.backend_s = upstream.elapsed_s
    if model is not None and upstream.status < 400:
        request.state.model = model
    if upstream.content is not None:
        if upstream.status >= 400:
            return kserve_error(upstream.status, upstream.headers, upstream.content)
        return Response(upstream.content, status_code=upstream.status, headers=upstream.headers)
    return StreamingResponse(upstream.body, status_code=upstream.status, headers=upstream.headers,
                             background=BackgroundTask(upstream.aclose))


def kserve_error(status: int, headers: dict[str, str], content: bytes) -> Response:
    """Triton's refusal in the KServe v2 error shape `{"error": "<message>"}` that `tritonclient` parses.

    Triton answers most refusals in that shape already (relayed as they are); a few (e.g. a POST without a body
    to an unknown model) come as `text/plain`, which are wrapped so that every error body leaving is JSON.
    """
    if headers.get("content-type", "").startswith("application/json") or "content-encoding" in headers:
        return Response(content, status_code=status, headers=headers)
    message = content.decode("utf-8", "replace").strip() or f"inference server answered {status}"
    kept = {k: v for k, v in headers.items() if k not in ("content-type", "content-length")}
    return Response(orjson.dumps({"error": message}), status_code=status, headers=kept,
                    media_type="application/json")


@router.get("/v2/health/live")
async def health_live(request: Request, proxy: KServeProxy = Depends(get_kserve_proxy)) -> Response:
    """Triton liveness."""
    return await _relay(request, proxy, "GET", "/v2/health/live")


@router.get("/v2/health/ready")
async def health_ready(request: Request, proxy: KServeProxy = Depends(get_kserve_proxy)) -> Response:
    """Triton readiness."""
    return await _relay(request, proxy, "GET", "/v2/health/ready")


@router.get("/v2")
async def server_metadata(
    request: Request, _: Principal = Depends(get_principal), proxy: KServeProxy = Depends(get_kserve_proxy)
) -> Response:
    """Triton's server metadata (name, version, extensions)."""
    return await _relay(request, proxy, "GET", "/v2")


@router.get("/v2/models/{model}")
@router.get("/v2/models/{model}/versions/{version}")
async def model_metadata(
    request: Request, model: str, version: str | None = None,
    _: Principal = Depends(get_principal), proxy: KServeProxy = Depends(get_kserve_proxy),
) -> Response:
    """Model metadata (versions, inputs, outputs)."""
    return await _relay(request, proxy, "GET", model_path(model, version), model)


@router.get("/v2/models/{model}/{action}")
@router.get("/v2/models/{model}/versions/{version}/{action}")
async def model_get(
    request: Request, model: str, action: str, version: str | None = None,
    _: Principal = Depends(get_principal), proxy: KServeProxy = Depends(get_kserve_proxy),
) -> Response:
    """Model readiness, configuration or statistics."""
    if action not in MODEL_GET_ACTIONS:
        raise NotFoundError("no such route")
    return await _relay(request, proxy, "GET", model_path(model, version, f"/{action}"), model)


@router.post("/v2/models/{model}/infer")
@router.post("/v2/models/{model}/versions/{version}/infer")
async def model_infer(
    request: Request, model: str, version: str | None = None,
    _: Principal = Depends(rate_limited_principal), proxy: KServeProxy = Depends(get_kserve_proxy),
) -> Response:
    """Inference, JSON or binary tensor extension; body and framing headers forwarded unchanged."""
    path = model_path(model, version, "/infer")
    body = await request.body()
    check_infer_json(request.headers, body)
    return await _relay(request, proxy, "POST", path, model, body)


def check_infer_json(headers: Mapping[str, str], body: bytes) -> None:
    """400 `invalid_json` unless the request's JSON part parses (Triton answers a malformed body with a 500).

    The JSON part is the whole body, or its first `Inference-Header-Content-Length` bytes with the binary tensor
    extension. orjson also refuses nesting deeper than 1024. A compressed body (`Content-Encoding`) is Triton's
    to decompress and judge.
    """
    if "content-encoding" in headers:
        return
    declared = headers.get("inference-header-content-length")
    if declared is not None:
        if not declared.isdigit() or int(declared) > len(body):
            raise InvalidRequestError("Inference-Header-Content-Length must be a byte count within the body",
                                      param="Inference-Header-Content-Length", code="invalid_header")
        body = body[: int(declared)]
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequestError("inference request body is not valid JSON", code="invalid_json") from None
    if not isinstance(document, dict):
        raise InvalidRequestError("inference request must be a JSON object", code="invalid_json")
