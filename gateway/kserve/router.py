"""KServe v2 routes (`tritonclient.http` pointed at the gateway works): thin wrappers over `KServeProxy`.

`/v2/health/{live,ready}` need no key (probes); everything else does, and inference counts against the
caller's request limit. Inference, the hot path, is served by two `DirectRoute`s (`infer_routes`, which the app
adds ahead of its routers): documented like the other routes, served without FastAPI's dependency solver. Every
error under `/v2` has KServe v2's shape `{"error": "<message>"}`: Triton's own refusals through `kserve_error`, the
gateway's (auth, limits, validation, Triton unreachable) through `gateway.errors.error_response`.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from gateway.auth import Principal
from gateway.deps import admit_request, authenticate, get_kserve_proxy, get_principal, state_of
from gateway.errors import NotFoundError, kserve_error_body
from gateway.http.direct import DirectRoute
from gateway.http.record import record_of
from gateway.kserve.service import KServeProxy, model_path, routed_version
from gateway.kserve.validation import check_infer_request
from gateway.rollout.service import VERSION_HEADER, parse_pin

router = APIRouter(tags=["kserve"])  # full paths: the route template is the metrics label

MODEL_GET_ACTIONS = frozenset({"ready", "config", "stats"})


async def _relay(
    request: Request, proxy: KServeProxy, method: str, path: str, model: str | None = None,
    body: bytes | None = None,
) -> Response:
    upstream = await proxy.forward(method, path, request.headers, body)
    record_of(request).served(model if upstream.status < 400 else None, upstream.elapsed_s)
    if upstream.content is not None:
        if upstream.status >= 400:
            return kserve_error(upstream.status, upstream.headers, upstream.content)
        return Response(upstream.content, status_code=upstream.status, headers=upstream.headers)
    return StreamingResponse(upstream.body, status_code=upstream.status, headers=upstream.headers,
                             background=BackgroundTask(upstream.aclose))


def kserve_error(status: int, headers: dict[str, str], content: bytes) -> Response:
    """Triton's refusal in the KServe v2 error shape `{"error": "<message>"}` that `tritonclient` parses.

    Triton writes that shape, but its content type varies: `application/json` for most refusals, `text/plain` for
    some (an inference request to an unknown model), and a few bodies are plain text. So the body, not its declared
    type, decides: a JSON object with a string `error` carries the message, anything else is the message itself;
    either way the message leaves wrapped once, as JSON. A compressed body is relayed as it is.
    """
    if "content-encoding" in headers:
        return Response(content, status_code=status, headers=headers)
    message = triton_message(content) or f"inference server answered {status}"
    kept = {k: v for k, v in headers.items() if k not in ("content-type", "content-length")}
    return Response(kserve_error_body(message), status_code=status, headers=kept, media_type="application/json")


def triton_message(content: bytes) -> str:
    """The message of a Triton error body: its `error` string when it is KServe v2 JSON, else its text."""
    try:
        document = orjson.loads(content)
    except orjson.JSONDecodeError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        return document["error"]
    return content.decode("utf-8", "replace").strip()


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


# the JSON form of a KServe v2 inference request, for the OpenAPI document (clients and the schema fuzzer); the
# binary tensor extension (JSON header + raw tensors) is forwarded too but not described
_TENSOR = {
    "type": "object", "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": ["BOOL", "UINT8", "INT8", "INT32", "INT64", "FP16", "FP32", "FP64",
                                                "BYTES"]},
        "parameters": {"type": "object"},
        "data": {"type": "array"},
    },
}
_INFER_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object"},
        "inputs": {"type": "array", "items": _TENSOR},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"],
                                               "properties": {"name": {"type": "string"},
                                                              "parameters": {"type": "object"}}}},
    },
}}}}}


@dataclass(frozen=True, slots=True)
class InferCall:
    """What an inference request needs, resolved as its route's one dependency."""

    request: Request
    principal: Principal
    model: str
    version: str | None


async def infer_call(request: Request) -> InferCall:
    """Authenticate (401), admit against the request limit (429), and the path's model and version."""
    principal = authenticate(request)
    await admit_request(request, principal)
    params = request.path_params
    return InferCall(request, principal, params["model"], params.get("version"))


async def model_infer(call: InferCall = Depends(infer_call)) -> Response:
    """Inference, JSON or binary tensor extension; body and framing headers forwarded unchanged. Without a version
    in the path, the request gets the version `/v1/embeddings` would choose (a pin, the rollout table, else the
    oldest ready version), named in `x-tritonstack-model-version`."""
    request, model, version = call.request, call.model, call.version
    state = state_of(request)
    path = model_path(model, version, "/infer")  # validates the names first
    body = await request.body()
    check_infer_request(request.headers, body, max_elements=state.settings.max_body_bytes)
    choice = None
    if version is None:
        pin = parse_pin(request.headers.get(VERSION_HEADER))
        choice = await routed_version(state.rollouts, state.backend, model, call.principal.identity, pin)
        if choice is not None:
            path = model_path(model, choice.backend_version, "/infer")
    response = await _relay(request, state.kserve, "POST", path, model, body)
    if choice is not None:
        response.headers[VERSION_HEADER] = choice.version
    return response


def _path_parameters(*names: str) -> dict[str, list[dict[str, object]]]:
    return {"parameters": [{"name": name, "in": "path", "required": True,
                            "schema": {"type": "string", "title": name.title()}} for name in names]}


infer_routes = [
    DirectRoute(path, model_infer, methods=["POST"], name="model_infer", tags=["kserve"],
                openapi_extra={**_INFER_BODY, **_path_parameters(*names)})
    for path, names in (("/v2/models/{model}/infer", ("model",)),
                        ("/v2/models/{model}/versions/{version}/infer", ("model", "version")))
]
