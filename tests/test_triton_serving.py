"""The exported MiniLM served by a real tritonserver: parity, token counts, batching, per-request errors."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc.model_config_pb2 import ModelConfig
from tritonclient.utils import InferenceServerException

from stack.triton import TritonServer
from tests.fixtures.servers import repository_variant, start_triton

MODEL = "minilm"
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Triton batches requests of any length together.",
    "Ceci est une phrase en français, avec des accents : é è à ç.",
    "これは日本語の文です。",
    "هذه جملة باللغة العربية",
    "Emoji 🚀🔥 are tokenised too 🤖",
    "?!...;;;---",
    "",
    " ".join(["a very long document that goes on and on"] * 60),  # far beyond 256 tokens
]


def _text_input(texts: list[bytes], module=httpclient):  # tritonclient modules are untyped
    tensor = module.InferInput("text", [len(texts), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=object).reshape(-1, 1))
    return tensor


@pytest.fixture(scope="module")
def http(triton_server: TritonServer) -> httpclient.InferenceServerClient:
    client = httpclient.InferenceServerClient(triton_server.http_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc(triton_server: TritonServer) -> grpcclient.InferenceServerClient:
    """The gRPC client is thread-safe (the HTTP one is gevent-based): used for concurrent load."""
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def reference(minilm_source: Path):
    """sentence-transformers on the packaged model: the ground truth the export must match."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_source), device="cpu")


def _counts(http: httpclient.InferenceServerClient) -> tuple[int, int]:
    stats = http.get_inference_statistics(MODEL)["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


def test_embeddings_match_sentence_transformers_over_grpc(triton_server: TritonServer, reference) -> None:
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    result = client.infer(MODEL, [_text_input([s.encode() for s in SENTENCES], grpcclient)])
    got = result.as_numpy("embedding")
    want = reference.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True)
    cosines = np.sum(got * want, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert got.shape == (len(SENTENCES), 384)
    assert cosines.min() >= 0.9999, cosines
    client.close()


def test_token_counts_are_the_tokens_actually_embedded(http, reference) -> None:
    result = http.infer(MODEL, [_text_input([s.encode() for s in SENTENCES])])
    counts = result.as_numpy("token_count").reshape(-1).tolist()
    tokenizer = reference.tokenizer
    want = [len(tokenizer(s, truncation=True, max_length=reference.max_seq_length)["input_ids"]) for s in SENTENCES]
    assert counts == want
    assert counts[SENTENCES.index("")] == 2  # [CLS] [SEP]: an empty string embeds like sentence-transformers does
    assert max(counts) == 256  # the long document was truncated to the model's window


def test_concurrent_requests_are_batched(http, grpc) -> None:
    before_inf, before_exec = _counts(http)
    texts = [f"sentence number {i} about serving models" for i in range(96)]
    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(lambda t: grpc.infer(MODEL, [_text_input([t.encode()], grpcclient)]), texts))
    after_inf, after_exec = _counts(http)
    assert all(r.as_numpy("embedding").shape == (1, 384) for r in results)
    assert after_inf - before_inf == len(texts)
    # dynamic batching: fewer model executions than inferences
    assert after_exec - before_exec < after_inf - before_inf


@pytest.fixture(scope="module")
def gathering_server(minilm_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    """Triton whose batcher gathers requests for 1 s, so requests sent together share one execution."""

    def gather(cfg: ModelConfig) -> None:
        cfg.dynamic_batching.max_queue_delay_microseconds = 1_000_000

    root = tmp_path_factory.mktemp("gathering")
    server = start_triton(repository_variant(minilm_repository, root / "repo", MODEL, gather), root / "state")
    yield server
    server.stop()


def test_malformed_request_fails_alone_inside_a_batch(gathering_server: TritonServer) -> None:
    client = grpcclient.InferenceServerClient(gathering_server.grpc_url)
    good = [f"good request {i}".encode() for i in range(8)]
    payloads = [*good[:4], b"\xff\xfe not utf-8", *good[4:]]
    before = int(client.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]["execution_count"])
    with ThreadPoolExecutor(max_workers=len(payloads)) as pool:
        futures = [pool.submit(client.infer, MODEL, [_text_input([p], grpcclient)]) for p in payloads]
        outcomes = [f.exception() or f.result() for f in futures]
    stats = client.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]
    assert int(stats["execution_count"]) - before == 1  # all nine requests ran in one batch
    assert isinstance(outcomes[4], InferenceServerException) and "UTF-8" in str(outcomes[4])
    solo = [r for i, r in enumerate(outcomes) if i != 4]
    assert all(r.as_numpy("embedding").shape == (1, 384) for r in solo)
    alone = client.infer(MODEL, [_text_input([good[0]], grpcclient)]).as_numpy("embedding")
    assert np.allclose(solo[0].as_numpy("embedding"), alone, atol=1e-5)
    client.close()


def test_model_reports_its_version_and_config(http) -> None:
    config = http.get_model_config(MODEL)
    assert config["backend"] == "python"
    assert config["max_batch_size"] >= 32
    assert "dynamic_batching" in config
    result = http.infer(MODEL, [_text_input([b"which version?"])])
    assert result.get_response()["model_version"] == "1"


def _model_stub_rss_mb(server: TritonServer, model: str) -> dict[int, float]:
    """RSS of each python-backend stub process of `model` (one per instance)."""
    import psutil

    stubs = {}
    for pid in server.group_pids()[1:]:
        process = psutil.Process(pid)
        if f"/{model}/" in " ".join(process.cmdline()):
            stubs[pid] = process.memory_info().rss / 2**20
    return stubs


def test_full_batches_of_long_texts_do_not_grow_the_model_memory(http: httpclient.InferenceServerClient,
                                                                   triton_server: TritonServer) -> None:
    """ONNX Runtime's arena keeps what its largest run needed: runs are bounded in rows × width
    (`ort_max_batch_tokens`) and the warmup makes the largest one at load, so traffic finds memory at its plateau
    (issue 23: without the bound, one batch of 64 long texts took a stub from ~0.2 to ~0.8 GB for good)."""
    before = _model_stub_rss_mb(triton_server, MODEL)
    assert before, "no stub of the model found"
    longest = [" ".join(["a long document that goes on"] * 80).encode()] * 64
    for _ in range(len(before) * 2):  # every instance gets some
        result = http.infer(MODEL, [_text_input(longest)])
        assert result.as_numpy("embedding").shape == (64, 384)
    after = _model_stub_rss_mb(triton_server, MODEL)
    grown = {pid: after[pid] - before[pid] for pid in before}
    assert max(grown.values()) < 60, f"stub RSS grew by {grown} MB"
