"""Triton over gRPC (tritonclient.grpc.aio), behind the `Backend` interface.

Model metadata (versions, max_batch_size, tensor shapes) is cached per model for `model_info_ttl_s`; unknown
models are cached as such for the same time so a stream of bad names does not reach Triton. Embedding batches
larger than the model's `max_batch_size` are split and sent concurrently.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import (
    MAX_GRPC_MESSAGE_SIZE,
    InferInput,
    InferRequestedOutput,
    InferResult,
    KeepAliveOptions,
)
from tritonclient.grpc._utils import get_error_grpc
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from gateway.backends.base import EmbedResult, ModelEntry, ModelInfo, RowsResult, TensorInfo
from gateway.backends.coalesce import EmbedCoalescer
from gateway.errors import (
    BackendTimeoutError,
    BackendUnavailableError,
    GatewayError,
    InternalError,
    InvalidRequestError,
    NotFoundError,
)
from gateway.metrics import GatewayMetrics
from gateway.tracing import client_span, end, open_client_span, sampled_headers

log = logging.getLogger("gateway.backends.triton")

TEXT_INPUT = "text"
EMBEDDING_OUTPUT = "embedding"
TOKEN_COUNT_OUTPUT = "token_count"
_MAX_CACHED_MODELS = 1024

# gRPC's default reconnect backoff (1 s, ×1.6 per failed attempt, up to 120 s) means a channel that watched
# Triton stay down for a few seconds may wait many more before it tries again, while every RPC fails fast with
# UNAVAILABLE: the gateway would go on answering 503 for seconds after Triton is back (docs/RELIABILITY.md).
# Every channel retries the connection at least once a second instead (tests/test_reliability_triton.py).
RECONNECT_BACKOFF_MS = {"initial": 100, "min": 100, "max": 1000}
DNS_MIN_REFRESH_MS = 1000


def reconnecting_channel_args() -> list[tuple[str, Any]]:
    """tritonclient's default channel options (message sizes, keepalive) plus a short reconnect backoff and DNS
    refresh."""
    ka = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", ka.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", ka.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", ka.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", ka.http2_max_pings_without_data),
        *((f"grpc.{name}_reconnect_backoff_ms", ms) for name, ms in RECONNECT_BACKOFF_MS.items()),
        # a rescheduled pod keeps its DNS name but not its IP: re-resolve soon after a connection fails
        ("grpc.dns_min_time_between_resolutions_ms", DNS_MIN_REFRESH_MS),
    ]


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


def _tensors(items: Sequence[object], batched: bool) -> tuple[TensorInfo, ...]:
    out = []
    for t in items:
        shape = tuple(int(d) for d in t.shape)  # type: ignore[attr-defined]
        out.append(TensorInfo(t.name, t.datatype, shape[1:] if batched else shape))  # type: ignore[attr-defined]
    return tuple(out)


def _newest(versions: Sequence[str]) -> str:
    return max(versions, key=lambda v: (len(v), v)) if versions else ""


class TritonBackend:
    """A `Backend` on one Triton server's gRPC endpoint."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float,
        model_info_ttl_s: float,
        metrics: GatewayMetrics | None = None,
        coalesce_in_flight: int = 0,
        channel_args: list[tuple[str, Any]] | None = None,
    ) -> None:
        """`coalesce_in_flight` > 0 merges concurrent embedding calls per model (`EmbedCoalescer`), with at most
        that many requests per model and version in flight; 0 sends every call as it comes. `channel_args`
        default to `reconnecting_channel_args()`."""
        self.url = url
        self._client = InferenceServerClient(
            url, channel_args=channel_args if channel_args is not None else reconnecting_channel_args())
        self.coalescer = (EmbedCoalescer(self._send_embed, max_in_flight=coalesce_in_flight)
                          if coalesce_in_flight > 0 else None)
        self._timeout_s = timeout_s
        self._ttl_s = model_info_ttl_s
        self._metrics = metrics
        self._info: dict[str, tuple[float, ModelInfo | NotFoundError]] = {}
        self._info_locks: dict[str, asyncio.Lock] = {}

    async def close(self) -> None:
        """Finish coalesced requests in flight, then close the gRPC channel."""
        if self.coalescer is not None:
            await self.coalescer.aclose()
        await self._client.close()

    def _fail(self, exc: InferenceServerException, model: str) -> GatewayError:
        error, reason = map_triton_error(exc, model)
        if self._metrics is not None:
            self._metrics.backend_errors.labels(reason).inc()
        return error

    async def ready(self, timeout_s: float = 1.0) -> bool:
        """True when Triton answers `ServerReady` with true within `timeout_s`."""
        try:
            return bool(await self._client.is_server_ready(client_timeout=timeout_s))
        except (InferenceServerException, OSError):
            return False

    async def list_ready_models(self) -> list[ModelEntry]:
        """Models in the repository index whose state is READY (newest ready version of each)."""
        try:
            index = await self._client.get_model_repository_index(client_timeout=self._timeout_s)
        except InferenceServerException as exc:
            raise self._fail(exc, "") from None
        versions: dict[str, list[str]] = {}
        for m in index.models:
            if m.state == "READY":
                versions.setdefault(m.name, []).append(m.version)
        return [ModelEntry(name, _newest(v)) for name, v in sorted(versions.items())]

    def invalidate(self, model: str) -> None:
        """Forget cached metadata of `model` (e.g. after a version change was observed)."""
        self._info.pop(model, None)

    async def model_info(self, model: str) -> ModelInfo:
        """Cached metadata of a ready model; NotFoundError when it is unknown or not ready."""
        cached = self._info.get(model)
        if cached is None or cached[0] < time.monotonic():
            lock = self._info_locks.setdefault(model, asyncio.Lock())
            async with lock:
                cached = self._info.get(model)
                if cached is None or cached[0] < time.monotonic():
                    cached = (time.monotonic() + self._ttl_s, await self._fetch_info(model))
                    if len(self._info) >= _MAX_CACHED_MODELS:
                        self._info.clear()
                        self._info_locks = {model: lock}
                    self._info[model] = cached
        value = cached[1]
        if isinstance(value, NotFoundError):
            raise value
        return value

    async def _fetch_info(self, model: str) -> ModelInfo | NotFoundError:
        try:
            meta = await self._client.get_model_metadata(model, client_timeout=self._timeout_s)
            config = (await self._client.get_model_config(model, client_timeout=self._timeout_s)).config
        except InferenceServerException as exc:
            error = self._fail(exc, model)
            if isinstance(error, NotFoundError):
                return error
            raise error from None
        if not meta.versions:
            return model_not_found(model)
        batched = config.max_batch_size > 0
        return ModelInfo(
            name=model,
            version=_newest(list(meta.versions)),
            versions=tuple(meta.versions),
            max_batch_size=int(config.max_batch_size),
            inputs=_tensors(meta.inputs, batched),
            outputs=_tensors(meta.outputs, batched),
            platform=meta.platform or config.backend,
            extra={key: value.string_value for key, value in config.parameters.items()},  # e.g. the drift reference
        )

    async def embed(self, model: str, texts: Sequence[str], *, version: str = "") -> EmbedResult:
        """Embed texts with a text-in model (`text` → `embedding`, `token_count`), split by max_batch_size.

        `version` pins a Triton model version ("" = Triton's choice under the model's version policy)."""
        info = await self.model_info(model)
        if info.output(EMBEDDING_OUTPUT) is None:
            raise InvalidRequestError(f"The model '{model}' is not an embedding model", param="model",
                                      code="not_an_embedding_model")
        step = info.max_batch_size if info.max_batch_size > 0 else len(texts)
        if info.max_batch_size <= 0:  # the model's shapes are its own: never merge callers into one request
            return await self._send_embed(model, version, texts)
        chunks = [texts[i : i + step] for i in range(0, len(texts), step)]
        if len(chunks) == 1:
            return await self._embed_chunk(model, chunks[0], version, step)
        results = await asyncio.gather(*(self._embed_chunk(model, c, version, step) for c in chunks),
                                       return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        parts: list[EmbedResult] = results  # type: ignore[assignment]
        versions = {p.model_version for p in parts}
        return EmbedResult(
            vectors=np.concatenate([p.vectors for p in parts]),
            token_counts=np.concatenate([p.token_counts for p in parts]),
            model_version=versions.pop() if len(versions) == 1 else "",
        )

    async def _embed_chunk(self, model: str, texts: Sequence[str], version: str, max_items: int) -> EmbedResult:
        if self.coalescer is None:
            return await self._send_embed(model, version, texts)
        return await self.coalescer.embed(model, version, texts, max_items)

    async def _send_embed(self, model: str, version: str, texts: Sequence[str]) -> EmbedResult:
        try:
            data = np.array([t.encode("utf-8") for t in texts], dtype=np.object_).reshape(-1, 1)
        except UnicodeEncodeError:  # a lone surrogate ("\ud800") is valid JSON but not UTF-8
            raise InvalidRequestError("'input' contains invalid Unicode (an unpaired surrogate)", param="input",
                                      code="invalid_input") from None
        tensor = InferInput(TEXT_INPUT, list(data.shape), "BYTES")
        tensor.set_data_from_numpy(data)
        result = await self._infer(model, [tensor], version, None, len(texts))
        vectors = result.as_numpy(EMBEDDING_OUTPUT)
        counts = result.as_numpy(TOKEN_COUNT_OUTPUT)
        if vectors is None or counts is None or len(vectors) != len(texts):
            raise InternalError("The model returned an unexpected response", code="backend_error")
        return EmbedResult(
            vectors=np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1),
            token_counts=np.asarray(counts, dtype=np.int32).reshape(-1),
            model_version=result.get_response().model_version,
        )

    def _span_attributes(self, model: str, version: str, rows: int, method: str) -> dict[str, Any]:
        return {"rpc.system": "grpc", "rpc.service": "inference.GRPCInferenceService", "rpc.method": method,
                "server.address": self.url, "tritonstack.model": model, "tritonstack.model_version": version,
                "tritonstack.batch_size": rows}

    async def _infer(self, model: str, tensors: list[InferInput], version: str,
                     outputs: list[InferRequestedOutput] | None, rows: int) -> InferResult:
        """One ModelInfer, in a client span whose context Triton continues (when sampled)."""
        with client_span("triton ModelInfer", self._span_attributes(model, version, rows, "ModelInfer")) as span:
            try:
                result: InferResult = await self._client.infer(
                    model, tensors, model_version=version, outputs=outputs, client_timeout=self._timeout_s,
                    headers=sampled_headers())
            except InferenceServerException as exc:
                raise self._fail(exc, model) from None
            if span is not None:
                span.set_attribute("tritonstack.model_version", result.get_response().model_version)
            return result

    async def infer_rows(self, model: str, inputs: Mapping[str, Sequence[str]], outputs: Sequence[str], *,
                         version: str = "") -> RowsResult:
        """Rows of strings (rerank pairs, classify texts) → the named outputs, [n, ...] each, in row order.

        Split by the model's `max_batch_size` and sent concurrently; a model without batching gets one row per
        request. `version` pins a Triton model version ("" = Triton's choice)."""
        info = await self.model_info(model)
        n = len(next(iter(inputs.values()), ()))
        if n == 0 or any(len(column) != n for column in inputs.values()):
            raise ValueError("infer_rows needs at least one row and one value per row in every input")
        step = info.max_batch_size if info.max_batch_size > 0 else 1
        parts = [{name: column[i : i + step] for name, column in inputs.items()} for i in range(0, n, step)]
        batched = info.max_batch_size > 0
        if len(parts) == 1:
            return await self._send_rows(model, version, parts[0], outputs, batched)
        results = await asyncio.gather(*(self._send_rows(model, version, p, outputs, batched) for p in parts),
                                       return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        done: list[RowsResult] = results  # type: ignore[assignment]
        versions = {r.model_version for r in done}
        return RowsResult({name: np.concatenate([r.outputs[name] for r in done]) for name in outputs},
                          versions.pop() if len(versions) == 1 else "")

    async def _send_rows(self, model: str, version: str, inputs: Mapping[str, Sequence[str]],
                         outputs: Sequence[str], batched: bool) -> RowsResult:
        tensors = []
        for name, column in inputs.items():
            try:
                data = np.array([t.encode("utf-8") for t in column], dtype=np.object_)
            except UnicodeEncodeError:
                raise InvalidRequestError(f"'{name}' contains invalid Unicode (an unpaired surrogate)",
                                          code="invalid_input") from None
            data = data.reshape(-1, 1) if batched else data.reshape(1)
            tensor = InferInput(name, list(data.shape), "BYTES")
            tensor.set_data_from_numpy(data)
            tensors.append(tensor)
        rows = len(next(iter(inputs.values())))
        result = await self._infer(model, tensors, version, [InferRequestedOutput(name) for name in outputs], rows)
        arrays = {}
        for name in outputs:
            array = result.as_numpy(name)
            if array is None or array.size % rows:
                raise InternalError("The model returned an unexpected response", code="backend_error")
            arrays[name] = array.reshape(rows, -1)
        return RowsResult(arrays, result.get_response().model_version)

    async def stream_infer(self, model: str, inputs: Mapping[str, np.ndarray], *, timeout_s: float,
                           request_id: str = "") -> AsyncIterator[dict[str, np.ndarray]]:
        """One request to a (decoupled) model over a gRPC stream: each response's outputs, until the final one.

        `timeout_s` bounds each wait for the next response. Closing the iterator early cancels the request on the
        server (the model sees it as cancelled). Failures are the gateway's typed errors (`map_triton_error`).
        """
        tensors = []
        for name, array in inputs.items():
            tensor = InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)

        async def requests() -> AsyncIterator[dict]:
            yield {"model_name": model, "inputs": tensors, "request_id": request_id}

        span = open_client_span("triton ModelStreamInfer",
                                self._span_attributes(model, "", 1, "ModelStreamInfer"))
        call = self._client.stream_infer(requests(), headers=sampled_headers(span))
        finished = False
        error: BaseException | None = None
        try:
            while True:
                result = await self._next_response(call, model, timeout_s)
                response = result.get_response()
                params = response.parameters
                finished = "triton_final_response" not in params or params["triton_final_response"].bool_param
                yield {out.name: result.as_numpy(out.name) for out in response.outputs}
                if finished:
                    return
        except BaseException as exc:
            error = exc
            raise
        finally:
            end(span, error)
            if not finished or not await _ended(call):
                call.cancel()  # a stream cancelled after its final response leaves memory behind in Triton 2.51

    async def _next_response(self, call: AsyncIterator, model: str, timeout_s: float) -> InferResult:
        try:
            result, error = await asyncio.wait_for(anext(call), timeout_s)
        except TimeoutError:
            if self._metrics is not None:
                self._metrics.backend_errors.labels("timeout").inc()
            raise BackendTimeoutError("The inference server did not answer in time") from None
        except StopAsyncIteration:
            raise BackendUnavailableError("The inference server closed the stream before the final response") from None
        except grpc.RpcError as exc:
            raise self._fail(get_error_grpc(exc), model) from None
        except InferenceServerException as exc:
            raise self._fail(exc, model) from None
        if error is not None:
            raise self._fail(error, model)
        return result


async def _ended(call: AsyncIterator, timeout_s: float = 1.0) -> bool:
    """Whether the stream ends by itself after its final response (the server closes it once the request stream
    is closed), so that it needs no cancel."""
    try:
        await asyncio.wait_for(anext(call), timeout_s)
    except StopAsyncIteration:
        return True
    except (TimeoutError, grpc.RpcError, InferenceServerException):
        return False
    return False  # one more response after the final one: not a stream we understand, cancel it
