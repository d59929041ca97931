"""The Triton backend's HTTP transport (`gateway.backends.triton_http`): the KServe binary framing, the same
answers and typed errors as the gRPC transport against a real tritonserver, and HTTP failures mapped like gRPC's
(a fake Triton: queue full, internal error, a keep-alive connection closed while idle, a read past the deadline)."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator

import numpy as np
import pytest
from aiohttp import web

from gateway.backends.triton import TritonBackend
from gateway.backends.triton_http import decode_response, encode_request
from gateway.errors import (
    BackendTimeoutError,
    BackendUnavailableError,
    GatewayError,
    InternalError,
    InvalidRequestError,
    NotFoundError,
)
from stack.process import free_port
from stack.triton import TritonServer

MODEL = "minilm"


def test_request_framing_is_kserve_binary() -> None:
    texts = np.array([[b"hi"], ["é".encode()]], dtype=np.object_)
    body, length = encode_request({"text": texts, "n": np.array([[7]], dtype=np.int32)}, ["embedding"])
    header = json.loads(body[:length])
    assert header["inputs"][0] == {"name": "text", "shape": [2, 1], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": 4 + 2 + 4 + 2}}
    assert header["inputs"][1]["datatype"] == "INT32" and header["outputs"] == [
        {"name": "embedding", "parameters": {"binary_data": True}}]
    assert body[length:] == struct.pack("<I", 2) + b"hi" + struct.pack("<I", 2) + "é".encode() + struct.pack("<i", 7)
    body, length = encode_request({"text": texts}, None)  # every output, binary
    assert json.loads(body[:length])["parameters"] == {"binary_data_output": True}


def test_response_framing_binary_and_json() -> None:
    vectors = np.arange(6, dtype="<f4").reshape(2, 3)
    words = struct.pack("<I", 1) + b"a" + struct.pack("<I", 2) + b"bc"
    head = json.dumps({"model_version": "3", "outputs": [
        {"name": "embedding", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": 24}},
        {"name": "label", "datatype": "BYTES", "shape": [2, 1], "parameters": {"binary_data_size": len(words)}},
        {"name": "count", "datatype": "INT32", "shape": [2], "data": [4, 5]}]}).encode()
    outputs, version = decode_response(head + vectors.tobytes() + words, len(head))
    assert version == "3"
    np.testing.assert_array_equal(outputs["embedding"], vectors)
    assert outputs["label"].reshape(-1).tolist() == [b"a", b"bc"] and outputs["count"].tolist() == [4, 5]
    outputs, _ = decode_response(json.dumps({"outputs": [{"name": "x", "datatype": "FP32", "shape": [1],
                                                          "data": [1.5]}]}).encode(), None)
    assert outputs["x"].tolist() == [1.5]


async def test_http_and_grpc_transports_agree(triton_server: TritonServer) -> None:
    http = TritonBackend(triton_server.grpc_url, timeout_s=30, model_info_ttl_s=60, http_url=triton_server.http_url)
    grpc = TritonBackend(triton_server.grpc_url, timeout_s=30, model_info_ttl_s=60)
    try:
        assert await http.ready() and await http.list_ready_models() == await grpc.list_ready_models()
        assert await http.model_info(MODEL) == await grpc.model_info(MODEL)
        texts = ["hello", "une phrase accentuée", "third"]
        a, b = await http.embed(MODEL, texts), await grpc.embed(MODEL, texts)
        np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-6)
        assert a.token_counts.tolist() == b.token_counts.tolist() and a.model_version == b.model_version
        rows = await http.infer_rows(MODEL, {"text": texts}, ["embedding"], version=a.model_version)
        np.testing.assert_allclose(rows.outputs["embedding"], a.vectors, atol=1e-6)
        for backend in (http, grpc):
            for model, version, error in (("nope", "", NotFoundError), (MODEL, "99", NotFoundError)):
                with pytest.raises(error):
                    await backend.embed(model, ["x"], version=version)
            with pytest.raises(InvalidRequestError, match="unpaired surrogate"):
                await backend.embed(MODEL, ["\ud800"])
    finally:
        await http.close()
        await grpc.close()


async def test_unreachable_http_endpoint_is_unavailable() -> None:
    backend = TritonBackend(f"127.0.0.1:{free_port()}", timeout_s=5, model_info_ttl_s=60,
                            http_url=f"127.0.0.1:{free_port()}")
    try:
        assert not await backend.ready(timeout_s=1)
        with pytest.raises(BackendUnavailableError) as caught:
            await backend.embed(MODEL, ["x"])
        assert caught.value.code == "backend_unavailable"
    finally:
        await backend.close()


class FakeTriton:
    """Answers model metadata like Triton, and inference as `mode` says."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.infers = 0

    async def metadata(self, request: web.Request) -> web.Response:
        return web.json_response({"name": MODEL, "versions": ["1"], "platform": "python",
                                  "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1, 1]}],
                                  "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 2]},
                                              {"name": "token_count", "datatype": "INT32", "shape": [-1, 1]}]})

    async def config(self, request: web.Request) -> web.Response:
        return web.json_response({"name": MODEL, "max_batch_size": 8, "backend": "python", "parameters": {}})

    async def infer(self, request: web.Request) -> web.StreamResponse:
        self.infers += 1
        await request.read()
        if self.mode == "queue_full":
            return web.json_response({"error": "Exceeds maximum queue size"}, status=503)
        if self.mode == "internal":
            return web.json_response({"error": "something broke"}, status=500)
        if self.mode == "slow":
            await asyncio.sleep(5)
        if self.mode == "drop_once":
            self.mode = "ok"
            assert request.transport is not None
            request.transport.close()  # the connection dies before an answer: a keep-alive closed while idle
            return web.Response()
        return web.json_response({"model_version": "1", "outputs": [
            {"name": "embedding", "datatype": "FP32", "shape": [1, 2], "data": [0.5, 0.25]},
            {"name": "token_count", "datatype": "INT32", "shape": [1, 1], "data": [3]}]})


@pytest.fixture
async def fake_triton() -> AsyncIterator[tuple[FakeTriton, str]]:
    fake = FakeTriton()
    app = web.Application()
    app.router.add_get(f"/v2/models/{MODEL}", fake.metadata)
    app.router.add_get(f"/v2/models/{MODEL}/config", fake.config)
    app.router.add_post(f"/v2/models/{MODEL}/infer", fake.infer)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield fake, f"127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(("mode", "error", "code"), [
    ("queue_full", BackendUnavailableError, "backend_overloaded"),
    ("internal", InternalError, "backend_error"),
    ("slow", BackendTimeoutError, "backend_timeout"),
])
async def test_http_failures_are_typed_like_grpc(fake_triton: tuple[FakeTriton, str], mode: str,
                                                 error: type[GatewayError], code: str) -> None:
    fake, address = fake_triton
    backend = TritonBackend(f"127.0.0.1:{free_port()}", timeout_s=1, model_info_ttl_s=60, http_url=address)
    try:
        assert (await backend.embed(MODEL, ["x"])).vectors.tolist() == [[0.5, 0.25]]
        fake.mode = mode
        with pytest.raises(error) as caught:
            await backend.embed(MODEL, ["x"])
        assert caught.value.code == code
    finally:
        await backend.close()


async def test_a_connection_dropped_before_the_answer_is_retried_once(fake_triton: tuple[FakeTriton, str]) -> None:
    fake, address = fake_triton
    backend = TritonBackend(f"127.0.0.1:{free_port()}", timeout_s=5, model_info_ttl_s=60, http_url=address)
    try:
        await backend.embed(MODEL, ["warm"])  # a keep-alive connection in the pool
        fake.mode, before = "drop_once", fake.infers
        result = await backend.embed(MODEL, ["x"])
        assert result.token_counts.tolist() == [3] and fake.infers == before + 2
    finally:
        await backend.close()
