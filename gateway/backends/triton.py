"""Triton behind the `Backend` interface: unary calls over KServe v2 HTTP on the event loop, streams over gRPC.

With an HTTP address (the gateway), inference, metadata and health checks go over HTTP (`triton_http`: binary
tensors, pooled keep-alive connections read by the event loop itself); streams of decoupled models (chat) go over
gRPC (`triton_grpc`), whose channel opens on the first stream. Without one (the jobs worker, which knows only
gRPC addresses), everything goes over gRPC.

Model metadata (versions, max_batch_size, tensor shapes) is cached per model for `model_info_ttl_s`; unknown
models are cached as such for the same time so a stream of bad names does not reach Triton. Embedding batches
larger than the model's `max_batch_size` are split and sent concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import aiohttp
import numpy as np
from tritonclient.utils import InferenceServerException

from gateway.backends.base import EmbedResult, ModelEntry, ModelInfo, RowsResult
from gateway.backends.coalesce import EmbedCoalescer
from gateway.backends.triton_common import map_triton_error, model_not_found, newest
from gateway.backends.triton_grpc import TritonGrpc
from gateway.backends.triton_http import TritonHttp, triton_http_session
from gateway.errors import GatewayError, InternalError, InvalidRequestError, NotFoundError
from gateway.metrics import GatewayMetrics
from gateway.tracing import client_span, end, open_client_span, sampled_headers

__all__ = ["TritonBackend", "map_triton_error", "model_not_found"]

TEXT_INPUT = "text"
EMBEDDING_OUTPUT = "embedding"
TOKEN_COUNT_OUTPUT = "token_count"
_MAX_CACHED_MODELS = 1024


def _utf8(texts: Sequence[str], name: str, param: str | None = None) -> list[bytes]:
    try:
        return [t.encode("utf-8") for t in texts]
    except UnicodeEncodeError:  # a lone surrogate ("\ud800") is valid JSON but not UTF-8
        raise InvalidRequestError(f"'{name}' contains invalid Unicode (an unpaired surrogate)", param=param,
                                  code="invalid_input") from None


def _column(items: list[bytes], batched: bool) -> np.ndarray:
    array = np.empty(len(items), dtype=np.object_)
    array[:] = items
    return array.reshape(-1, 1) if batched else array


class TritonBackend:
    """A `Backend` on one Triton server: its gRPC address, and its HTTP address for unary calls when given."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float,
        model_info_ttl_s: float,
        metrics: GatewayMetrics | None = None,
        coalesce_in_flight: int = 0,
        channel_args: list[tuple[str, Any]] | None = None,
        http_url: str | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        """`coalesce_in_flight` > 0 merges concurrent embedding calls per model (`EmbedCoalescer`), with at most
        that many requests per model and version in flight; 0 sends every call as it comes. `channel_args`
        default to `triton_grpc.reconnecting_channel_args()`. `http_url` (`host:port`) sends unary calls over
        HTTP through `session` (shared, closed by its owner; a session of its own when None)."""
        self.url = url
        self.http_url = http_url
        self._grpc = TritonGrpc(url, timeout_s, channel_args)
        self._own_session: aiohttp.ClientSession | None = None
        if http_url is not None and session is None:
            session = self._own_session = triton_http_session(256, timeout_s)
        self._unary: TritonHttp | TritonGrpc = (TritonHttp(http_url, session, timeout_s)
                                                if http_url is not None and session is not None else self._grpc)
        self.coalescer = (EmbedCoalescer(self._send_embed, max_in_flight=coalesce_in_flight)
                          if coalesce_in_flight > 0 else None)
        self._ttl_s = model_info_ttl_s
        self._metrics = metrics
        self._info: dict[str, tuple[float, ModelInfo | NotFoundError]] = {}
        self._info_locks: dict[str, asyncio.Lock] = {}
        self._attributes = ({"http.request.method": "POST", "server.address": http_url} if http_url is not None
                            else {"rpc.system": "grpc", "rpc.service": "inference.GRPCInferenceService",
                                  "rpc.method": "ModelInfer", "server.address": url})

    async def close(self) -> None:
        """Finish coalesced requests in flight, then close the gRPC channel (and the session, when our own)."""
        if self.coalescer is not None:
            await self.coalescer.aclose()
        await self._grpc.close()
        if self._own_session is not None:
            await self._own_session.close()

    def _fail(self, exc: InferenceServerException, model: str) -> GatewayError:
        error, reason = map_triton_error(exc, model)
        if self._metrics is not None:
            self._metrics.backend_errors.labels(reason).inc()
        return error

    def _timed_out(self) -> None:
        if self._metrics is not None:
            self._metrics.backend_errors.labels("timeout").inc()

    async def ready(self, timeout_s: float = 1.0) -> bool:
        """True when Triton answers that it is ready within `timeout_s`."""
        return await self._unary.ready(timeout_s)

    async def list_ready_models(self) -> list[ModelEntry]:
        """Models in the repository index whose state is READY (newest ready version of each)."""
        try:
            entries = await self._unary.ready_models()
        except InferenceServerException as exc:
            raise self._fail(exc, "") from None
        versions: dict[str, list[str]] = {}
        for name, version in entries:
            versions.setdefault(name, []).append(version)
        return [ModelEntry(name, newest(v)) for name, v in sorted(versions.items())]

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
            return await self._unary.model_info(model)
        except InferenceServerException as exc:
            error = self._fail(exc, model)
            if isinstance(error, NotFoundError):
                return error
            raise error from None

    async def embed(self, model: str, texts: Sequence[str], *, version: str = "") -> EmbedResult:
        """Embed texts with a text-in model (`text` → `embedding`, `token_count`), split by max_batch_size.

        `version` pins a Triton model version ("" = Triton's choice under the model's version policy)."""
        info = await self.model_info(model)
        if info.output(EMBEDDING_OUTPUT) is None:
            raise InvalidRequestError(f"The model '{model}' is not an embedding model", param="model",
                                      code="not_an_embedding_model")
        if info.max_batch_size <= 0:  # the model's shapes are its own: never merge callers into one request
            return await self._send_embed(model, version, texts)
        step = info.max_batch_size
        if len(texts) <= step:
            return await self._embed_chunk(model, texts, version, step)
        chunks = [texts[i : i + step] for i in range(0, len(texts), step)]
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
        data = _column(_utf8(texts, "input", "input"), batched=True)
        outputs, served = await self._infer(model, {TEXT_INPUT: data}, version, None, len(texts))
        vectors, counts = outputs.get(EMBEDDING_OUTPUT), outputs.get(TOKEN_COUNT_OUTPUT)
        if vectors is None or counts is None or len(vectors) != len(texts):
            raise InternalError("The model returned an unexpected response", code="backend_error")
        return EmbedResult(
            vectors=np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1),
            token_counts=np.asarray(counts, dtype=np.int32).reshape(-1),
            model_version=served,
        )

    async def _infer(self, model: str, inputs: Mapping[str, np.ndarray], version: str,
                     outputs: Sequence[str] | None, rows: int) -> tuple[dict[str, np.ndarray], str]:
        """One inference, in a client span whose context Triton continues (when sampled)."""
        attributes = {**self._attributes, "tritonstack.model": model, "tritonstack.model_version": version,
                      "tritonstack.batch_size": rows}
        with client_span("triton ModelInfer", attributes) as span:
            try:
                result = await self._unary.infer(model, version, inputs, outputs, sampled_headers())
            except InferenceServerException as exc:
                raise self._fail(exc, model) from None
            if span is not None:
                span.set_attribute("tritonstack.model_version", result[1])
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
        tensors = {name: _column(_utf8(column, name), batched) for name, column in inputs.items()}
        rows = len(next(iter(inputs.values())))
        answered, served = await self._infer(model, tensors, version, list(outputs), rows)
        arrays = {}
        for name in outputs:
            array = answered.get(name)
            if array is None or array.size % rows:
                raise InternalError("The model returned an unexpected response", code="backend_error")
            arrays[name] = array.reshape(rows, -1)
        return RowsResult(arrays, served)

    async def stream_infer(self, model: str, inputs: Mapping[str, np.ndarray], *, timeout_s: float,
                           request_id: str = "") -> AsyncIterator[dict[str, np.ndarray]]:
        """One request to a (decoupled) model over a gRPC stream: each response's outputs, until the final one.

        `timeout_s` bounds each wait for the next response. Closing the iterator early cancels the request on the
        server (the model sees it as cancelled). Failures are the gateway's typed errors (`map_triton_error`).
        """
        span = open_client_span("triton ModelStreamInfer", {
            "rpc.system": "grpc", "rpc.service": "inference.GRPCInferenceService", "rpc.method": "ModelStreamInfer",
            "server.address": self.url, "tritonstack.model": model, "tritonstack.model_version": "",
            "tritonstack.batch_size": 1})
        error: BaseException | None = None
        try:
            async with contextlib.aclosing(self._grpc.stream_infer(
                    model, inputs, timeout_s=timeout_s, fail=lambda exc: self._fail(exc, model),
                    request_id=request_id, headers=sampled_headers(span), on_timeout=self._timed_out)) as responses:
                async for outputs in responses:
                    yield outputs
        except BaseException as exc:
            error = exc
            raise
        finally:
            end(span, error)
