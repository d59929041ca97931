"""What the Triton transports share: the error mapping and the model metadata they both build.

Both transports (`triton_grpc`, `triton_http`) raise tritonclient's `InferenceServerException` with a gRPC status
name; `map_triton_error` turns it into the gateway's typed error and a metrics reason.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

from tritonclient.utils import InferenceServerException

from gateway.backends.base import ModelInfo, TensorInfo
from gateway.errors import (
    BackendTimeoutError,
    BackendUnavailableError,
    GatewayError,
    InternalError,
    InvalidRequestError,
    NotFoundError,
)

log = logging.getLogger("gateway.backends.triton")


def model_not_found(model: str) -> NotFoundError:
    """The error for a model that is unknown to Triton or not ready."""
    return NotFoundError(f"The model '{model}' does not exist or is not ready", param="model",
                         code="model_not_found")


def map_triton_error(exc: InferenceServerException, model: str) -> tuple[GatewayError, str]:
    """A tritonclient error → (typed gateway error, metrics reason)."""
    status = (exc.status() or "").removeprefix("StatusCode.")
    message = exc.message() or str(exc)
    lowered = message.lower()
    if "unknown model" in lowered or "is not found" in lowered or status == "NOT_FOUND":
        return model_not_found(model), "model_not_found"
    # decoupled models report errors inside the stream, without a gRPC status: their message says "overloaded"
    if ("exceeds maximum queue size" in lowered or ("queue" in lowered and status == "UNAVAILABLE")
            or lowered.startswith("overloaded")):
        return BackendUnavailableError("The inference server is overloaded (queue full); retry shortly",
                                       code="backend_overloaded"), "queue_full"
    if status == "DEADLINE_EXCEEDED":
        return BackendTimeoutError("The inference server did not answer in time"), "timeout"
    if status == "UNAVAILABLE":
        return BackendUnavailableError("The inference server is unavailable"), "unavailable"
    if status == "INVALID_ARGUMENT" or lowered.startswith("invalid request"):
        return InvalidRequestError(f"The model rejected the input: {message}", code="invalid_input"), "invalid"
    log.warning("triton error on model %s: %s %s", model, status, message)
    return InternalError("The inference server failed to process the request", code="backend_error"), "internal"


def newest(versions: Sequence[str]) -> str:
    """The highest version number of `versions` ("" when there is none)."""
    return max(versions, key=lambda v: (len(v), v)) if versions else ""


Tensor = tuple[str, str, Sequence[int]]  # name, KServe datatype, shape as the metadata gives it


def _tensors(items: Iterable[Tensor], batched: bool) -> tuple[TensorInfo, ...]:
    out = []
    for name, datatype, dims in items:
        shape = tuple(int(d) for d in dims)
        out.append(TensorInfo(name, datatype, shape[1:] if batched else shape))
    return tuple(out)


def build_info(model: str, versions: Sequence[str], inputs: Iterable[Tensor], outputs: Iterable[Tensor],
               platform: str, max_batch_size: int, backend: str, parameters: Mapping[str, str]
               ) -> ModelInfo | NotFoundError:
    """`ModelInfo` from a model's metadata and config; NotFoundError when no version is ready."""
    if not versions:
        return model_not_found(model)
    batched = max_batch_size > 0
    return ModelInfo(
        name=model,
        version=newest(list(versions)),
        versions=tuple(versions),
        max_batch_size=int(max_batch_size),
        inputs=_tensors(inputs, batched),
        outputs=_tensors(outputs, batched),
        platform=platform or backend,
        extra=dict(parameters),  # e.g. the drift reference
    )
