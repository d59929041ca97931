"""Triton's KServe v2 HTTP endpoint on the gateway's own event loop: binary tensors over pooled keep-alive
connections (`aiohttp`).

Why not gRPC for unary calls: tritonclient's `grpc.aio` client completes every call on gRPC's poller thread, so
each request crosses threads twice and wakes the event loop from another thread; an aiohttp connection is read by
the loop itself. Why not tritonclient's `http.aio` client: it builds `InferInput`/`InferResult` objects and
parses JSON with the standard library on every call, where this module writes the request header with orjson,
frames the BYTES tensor in one join and reads the outputs as views of the response body. The comparison that
chose this is `loadtest/bench/triton_clients.py` (figures in docs/BENCHMARKS.md).

Every failure is raised as tritonclient's `InferenceServerException` with a gRPC status name, as the gRPC client
raises them, so one mapping (`gateway.backends.triton_common.map_triton_error`) serves both transports: Triton's
HTTP status → NOT_FOUND / INVALID_ARGUMENT / UNAVAILABLE / INTERNAL, a connection failure → UNAVAILABLE, a read
that outlasts the timeout → DEADLINE_EXCEEDED. A keep-alive connection that the server closed while it was idle
fails on reuse: that request is sent once more on a new connection (inference is idempotent).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import numpy as np
import orjson
from tritonclient.utils import (
    InferenceServerException,
    deserialize_bytes_tensor,
    np_to_triton_dtype,
    triton_to_np_dtype,
)

from gateway.backends.base import ModelInfo
from gateway.backends.triton_common import build_info
from gateway.errors import NotFoundError

HEADER_LENGTH = "Inference-Header-Content-Length"
_NO_DEFAULT_HEADERS = ("Accept-Encoding", "User-Agent", "Content-Type")
_STATUS = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 408: "DEADLINE_EXCEEDED", 429: "UNAVAILABLE",
           503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
_STALE = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)  # a reused connection the server had closed
_LENGTH = struct.Struct("<I")


def triton_http_session(max_connections: int, timeout_s: float) -> aiohttp.ClientSession:
    """One session to Triton's HTTP port(s): raw bodies (no decompression), no default headers, no cookies,
    per-read timeouts.

    The `/v2` passthrough and the HTTP transport share it. Must be created inside the running event loop."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max_connections, ttl_dns_cache=1),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=2.0, sock_read=timeout_s),
        auto_decompress=False,
        skip_auto_headers=_NO_DEFAULT_HEADERS,
        trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(),  # Triton sets none; nothing to store or send per request
    )


def _error(status: str, message: str) -> InferenceServerException:
    return InferenceServerException(msg=message, status=f"StatusCode.{status}")


def _message(body: bytes, status: int) -> str:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        return document["error"]
    return body.decode("utf-8", "replace").strip() or f"inference server answered {status}"


def encode_request(inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None) -> tuple[bytes, int]:
    """(body, JSON header length) of an inference request with every tensor binary (BYTES: 4-byte little-endian
    length + bytes per element) and every output asked for binary."""
    tensors, parts = [], []
    for name, array in inputs.items():
        if array.dtype == np.object_:
            items = array.reshape(-1).tolist()
            raw = b"".join(_LENGTH.pack(len(item)) + item for item in items)
            datatype = "BYTES"
        else:
            raw = np.ascontiguousarray(array).tobytes()
            datatype = str(np_to_triton_dtype(array.dtype))
        tensors.append({"name": name, "shape": list(array.shape), "datatype": datatype,
                        "parameters": {"binary_data_size": len(raw)}})
        parts.append(raw)
    header: dict[str, Any] = {"inputs": tensors}
    if outputs is None:
        header["parameters"] = {"binary_data_output": True}
    else:
        header["outputs"] = [{"name": name, "parameters": {"binary_data": True}} for name in outputs]
    head = orjson.dumps(header)
    return head + b"".join(parts), len(head)


def decode_response(body: bytes, header_length: int | None) -> tuple[dict[str, np.ndarray], str]:
    """(outputs by name, the model version that served) of an inference response, binary or JSON."""
    head = orjson.loads(body if header_length is None else memoryview(body)[:header_length])
    offset = header_length or 0
    arrays: dict[str, np.ndarray] = {}
    for out in head.get("outputs", ()):
        shape, datatype = out["shape"], out["datatype"]
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is None:
            arrays[out["name"]] = np.array(out["data"], dtype=triton_to_np_dtype(datatype)).reshape(shape)
            continue
        chunk = body[offset : offset + size]
        offset += size
        if datatype == "BYTES":
            arrays[out["name"]] = deserialize_bytes_tensor(chunk).reshape(shape)
        else:
            arrays[out["name"]] = np.frombuffer(chunk, dtype=triton_to_np_dtype(datatype)).reshape(shape)
    return arrays, str(head.get("model_version", ""))


class TritonHttp:
    """Unary KServe v2 calls to one Triton HTTP address (`host:port`) through a shared session."""

    def __init__(self, address: str, session: aiohttp.ClientSession, timeout_s: float) -> None:
        self.base_url = f"http://{address}"
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=2.0)

    async def infer(self, model: str, version: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None,
                    headers: Mapping[str, str] | None = None) -> tuple[dict[str, np.ndarray], str]:
        """One inference: (outputs by name, served version); InferenceServerException on any failure."""
        body, header_length = encode_request(inputs, outputs)
        sent = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(header_length)}
        if headers:
            sent.update(headers)
        path = f"/v2/models/{model}/versions/{version}/infer" if version else f"/v2/models/{model}/infer"
        content, answered = await self.request("POST", path, sent, body)
        length = answered.get(HEADER_LENGTH)
        try:
            return decode_response(content, int(length) if length is not None else None)
        except (ValueError, KeyError, TypeError) as exc:
            raise _error("INTERNAL", f"malformed inference response: {type(exc).__name__}") from None

    async def ready_models(self) -> list[tuple[str, str]]:
        """(name, version) of every READY entry of the repository index."""
        content, _ = await self.request("POST", "/v2/repository/index", {"Content-Type": "application/json"}, b"{}")
        return [(m["name"], str(m.get("version", ""))) for m in orjson.loads(content) if m.get("state") == "READY"]

    async def model_info(self, model: str) -> ModelInfo | NotFoundError:
        """Metadata and config of `model`."""
        meta = orjson.loads((await self.request("GET", f"/v2/models/{model}", None, None))[0])
        config = orjson.loads((await self.request("GET", f"/v2/models/{model}/config", None, None))[0])
        parameters = {key: str(value.get("string_value", ""))
                      for key, value in (config.get("parameters") or {}).items()}
        return build_info(model, [str(v) for v in meta.get("versions", ())],
                          ((t["name"], t["datatype"], t["shape"]) for t in meta.get("inputs", ())),
                          ((t["name"], t["datatype"], t["shape"]) for t in meta.get("outputs", ())),
                          str(meta.get("platform", "")), int(config.get("max_batch_size", 0)),
                          str(config.get("backend", "")), parameters)

    async def ready(self, timeout_s: float) -> bool:
        """True when `/v2/health/ready` answers 200 within `timeout_s`."""
        try:
            await self.request("GET", "/v2/health/ready", None, None, timeout_s)
        except InferenceServerException:
            return False
        return True

    async def request(self, method: str, path: str, headers: Mapping[str, str] | None, body: bytes | None,
                      timeout_s: float | None = None) -> tuple[bytes, Any]:
        """(body, headers) of a 200 answer; anything else raised as InferenceServerException."""
        timeout = self.timeout if timeout_s is None else aiohttp.ClientTimeout(total=timeout_s, sock_connect=2.0)
        for attempt in (1, 2):
            try:
                async with self.session.request(method, self.base_url + path, headers=headers, data=body,
                                                timeout=timeout) as response:
                    content = await response.read()
                    if response.status != 200:
                        raise _error(_STATUS.get(response.status, "INTERNAL"), _message(content, response.status))
                    return content, response.headers
            except TimeoutError:
                raise _error("DEADLINE_EXCEEDED", "deadline exceeded") from None
            except _STALE as exc:
                if attempt == 2 or isinstance(exc, aiohttp.ClientConnectorError):
                    raise _error("UNAVAILABLE", f"connection failed: {type(exc).__name__}") from None
            except aiohttp.ClientError as exc:
                raise _error("UNAVAILABLE", f"connection failed: {type(exc).__name__}") from None
        raise AssertionError("unreachable")
