"""Request coalescing in the Triton backend, against a real tritonserver: concurrent embedding calls share
inference requests (the first call finds a free slot and goes at once, those arriving while it is in flight go
out together), answers equal the uncoalesced ones, and one caller's bad input fails only that caller."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from gateway.backends.base import EmbedResult
from gateway.backends.triton import TritonBackend
from gateway.errors import InvalidRequestError
from stack.triton import TritonServer

MODEL = "minilm"
TEXTS = [f"sentence number {i} about {topic}" for i, topic in enumerate(
    ["rivers", "mountains", "databases", "music", "bread", "tides", "poetry", "engines"] * 2)]


def _requests(server: TritonServer) -> int:
    """Inference requests Triton has answered for the model (all versions)."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        stats = client.get_inference_statistics(MODEL, as_json=True)["model_stats"]
        return sum(int(m["inference_stats"]["success"].get("count", 0)) for m in stats)
    finally:
        client.close()


async def _embed_each(backend: TritonBackend, texts: list[str]) -> list[EmbedResult | BaseException]:
    await backend.model_info(MODEL)  # metadata cached: every call below reaches the coalescer in one turn
    return await asyncio.gather(*(backend.embed(MODEL, [t]) for t in texts), return_exceptions=True)


async def test_concurrent_calls_share_one_request_and_match_uncoalesced(triton_server: TritonServer) -> None:
    plain = TritonBackend(triton_server.grpc_url, timeout_s=30, model_info_ttl_s=60)
    merged = TritonBackend(triton_server.grpc_url, timeout_s=30, model_info_ttl_s=60, coalesce_in_flight=1)
    try:
        expected = await plain.embed(MODEL, TEXTS)
        before = _requests(triton_server)
        results = await _embed_each(merged, TEXTS)
        sent = _requests(triton_server) - before
    finally:
        await plain.close()
        await merged.close()
    assert merged.coalescer is not None and merged.coalescer.requests == 2
    assert sent == 2, f"{len(TEXTS)} concurrent calls should cost two inference requests, Triton saw {sent}"
    for i, result in enumerate(results):
        assert isinstance(result, EmbedResult)
        assert result.vectors.shape == (1, expected.vectors.shape[1])
        np.testing.assert_allclose(result.vectors[0], expected.vectors[i], atol=1e-5)
        assert result.token_counts.tolist() == [expected.token_counts[i]]


async def test_a_bad_input_fails_only_its_caller(triton_server: TritonServer) -> None:
    backend = TritonBackend(triton_server.grpc_url, timeout_s=30, model_info_ttl_s=60, coalesce_in_flight=1)
    texts = [*TEXTS[:4], "broken \ud800 surrogate", *TEXTS[4:8]]
    try:
        results = await _embed_each(backend, texts)
    finally:
        await backend.close()
    bad = results[4]
    assert isinstance(bad, InvalidRequestError) and bad.param == "input"
    good = [r for i, r in enumerate(results) if i != 4]
    assert all(isinstance(r, EmbedResult) and r.vectors.shape[0] == 1 for r in good)


async def test_batches_respect_max_batch_size(triton_server: TritonServer) -> None:
    backend = TritonBackend(triton_server.grpc_url, timeout_s=30, model_info_ttl_s=60, coalesce_in_flight=1)
    try:
        info = await backend.model_info(MODEL)
        n = info.max_batch_size + 3  # more callers than one request may carry
        results = await _embed_each(backend, [f"caller {i}" for i in range(n)])
    finally:
        await backend.close()
    assert all(isinstance(r, EmbedResult) for r in results)
    # the first at once, then the others in requests of at most max_batch_size texts
    assert backend.coalescer is not None and backend.coalescer.requests == 1 + 2


@pytest.mark.parametrize("in_flight", [0, 4])
async def test_server_down_fails_every_caller_cleanly(in_flight: int) -> None:
    from gateway.errors import BackendUnavailableError
    from stack.process import free_port

    backend = TritonBackend(f"127.0.0.1:{free_port()}", timeout_s=5, model_info_ttl_s=60,
                            coalesce_in_flight=in_flight)
    try:
        results = await asyncio.gather(*(backend.embed(MODEL, [t]) for t in TEXTS[:4]), return_exceptions=True)
    finally:
        await backend.close()
    assert all(isinstance(r, BackendUnavailableError) for r in results), results
