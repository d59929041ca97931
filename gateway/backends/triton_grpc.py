"""Triton over gRPC (tritonclient's `grpc.aio` client): every call of a backend without an HTTP address (the jobs
worker), and the streams of decoupled models (chat), which KServe's HTTP protocol has no equivalent for.

Failures are tritonclient's `InferenceServerException` (`gateway.backends.triton_common.map_triton_error` maps
them), except inside a stream, where `stream_infer` maps them itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
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

from gateway.backends.base import ModelInfo
from gateway.backends.triton_common import build_info
from gateway.errors import BackendTimeoutError, BackendUnavailableError, GatewayError, NotFoundError

# gRPC's default reconnect backoff (1 s, ×1.6 per failed attempt, up to 120 s) means a channel that watched
# Triton stay down for a few seconds may wait many more before it tries again, while every RPC fails fast with
# UNAVAILABLE: the gateway would go on answering 503 for seconds after Triton is back (docs/RELIABILITY.md).
# Every channel retries the connection at least once a second instead (tests/test_reliability_triton.py).
RECONNECT_BACKOFF_MS = {"initial": 100, "min": 100, "max": 1000}
DNS_MIN_REFRESH_MS = 1000

Fail = Callable[[InferenceServerException], GatewayError]


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


def _tensor(name: str, array: np.ndarray) -> InferInput:
    tensor = InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array)
    return tensor


class TritonGrpc:
    """One Triton gRPC endpoint; the channel is opened on first use (inside the event loop)."""

    def __init__(self, url: str, timeout_s: float, channel_args: list[tuple[str, Any]] | None = None) -> None:
        self.url = url
        self._timeout_s = timeout_s
        self._channel_args = channel_args if channel_args is not None else reconnecting_channel_args()
        self._client: InferenceServerClient | None = None

    @property
    def client(self) -> InferenceServerClient:
        """The gRPC client, created on first use (no channel, and no gRPC thread, until something needs one)."""
        if self._client is None:
            self._client = InferenceServerClient(self.url, channel_args=self._channel_args)
        return self._client

    async def close(self) -> None:
        """Close the channel, if one was opened."""
        if self._client is not None:
            await self._client.close()

    async def ready(self, timeout_s: float) -> bool:
        """True when Triton answers `ServerReady` with true within `timeout_s`."""
        try:
            return bool(await self.client.is_server_ready(client_timeout=timeout_s))
        except (InferenceServerException, OSError):
            return False

    async def ready_models(self) -> list[tuple[str, str]]:
        """(name, version) of every READY entry of the repository index."""
        index = await self.client.get_model_repository_index(client_timeout=self._timeout_s)
        return [(m.name, m.version) for m in index.models if m.state == "READY"]

    async def model_info(self, model: str) -> ModelInfo | NotFoundError:
        """Metadata and config of `model`."""
        meta = await self.client.get_model_metadata(model, client_timeout=self._timeout_s)
        config = (await self.client.get_model_config(model, client_timeout=self._timeout_s)).config
        return build_info(model, list(meta.versions), ((t.name, t.datatype, t.shape) for t in meta.inputs),
                          ((t.name, t.datatype, t.shape) for t in meta.outputs), meta.platform,
                          int(config.max_batch_size), config.backend,
                          {key: value.string_value for key, value in config.parameters.items()})

    async def infer(self, model: str, version: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None,
                    headers: Mapping[str, str] | None = None) -> tuple[dict[str, np.ndarray], str]:
        """One ModelInfer: (outputs by name, served version)."""
        result: InferResult = await self.client.infer(
            model, [_tensor(name, array) for name, array in inputs.items()], model_version=version,
            outputs=[InferRequestedOutput(name) for name in outputs] if outputs is not None else None,
            client_timeout=self._timeout_s, headers=dict(headers) if headers else None)
        response = result.get_response()
        names = outputs if outputs is not None else [out.name for out in response.outputs]
        return {name: result.as_numpy(name) for name in names}, response.model_version

    async def stream_infer(self, model: str, inputs: Mapping[str, np.ndarray], *, timeout_s: float, fail: Fail,
                           request_id: str = "", headers: Mapping[str, str] | None = None,
                           on_timeout: Callable[[], None] | None = None) -> AsyncIterator[dict[str, np.ndarray]]:
        """One request to a (decoupled) model over a gRPC stream: each response's outputs, until the final one.

        `timeout_s` bounds each wait for the next response (`on_timeout` is told). Closing the iterator early
        cancels the request on the server (the model sees it as cancelled). Failures go through `fail`."""
        tensors = [_tensor(name, array) for name, array in inputs.items()]

        async def requests() -> AsyncIterator[dict]:
            yield {"model_name": model, "inputs": tensors, "request_id": request_id}

        call = self.client.stream_infer(requests(), headers=dict(headers) if headers else None)
        finished = False
        try:
            while True:
                result = await _next_response(call, timeout_s, fail, on_timeout)
                response = result.get_response()
                params = response.parameters
                finished = "triton_final_response" not in params or params["triton_final_response"].bool_param
                yield {out.name: result.as_numpy(out.name) for out in response.outputs}
                if finished:
                    return
        finally:
            if not finished or not await _ended(call):
                call.cancel()  # a stream cancelled after its final response leaves memory behind in Triton 2.51


async def _next_response(call: AsyncIterator, timeout_s: float, fail: Fail,
                         on_timeout: Callable[[], None] | None) -> InferResult:
    try:
        result, error = await asyncio.wait_for(anext(call), timeout_s)
    except TimeoutError:
        if on_timeout is not None:
            on_timeout()
        raise BackendTimeoutError("The inference server did not answer in time") from None
    except StopAsyncIteration:
        raise BackendUnavailableError("The inference server closed the stream before the final response") from None
    except grpc.RpcError as exc:
        raise fail(get_error_grpc(exc)) from None
    except InferenceServerException as exc:
        raise fail(exc) from None
    if error is not None:
        raise fail(error)
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
