"""NVIDIA's own benchmarking clients against the gateway: `perf_analyzer` on the KServe v2 passthrough `/v2` (binary
and JSON tensors, an API key header) and AIPerf on `/v1/chat/completions` (streaming) and `/v1/embeddings`.

Both clash with the main venv, so they live in `.venv-clients` (`make clients`, which `make test` runs; pinned by
requirements-clients.lock). Each test skips, naming that target, when its tool is not installed there.
`perf_analyzer` is the binary inside the tritonclient 2.51 wheel: it needs no GPU, only `libb64-0d` (apt) and
`libcudart.so.12` from the nvidia-cuda-runtime-cu12 wheel on LD_LIBRARY_PATH. AIPerf runs offline with
`--tokenizer <directory holding tokenizer.json>` (an exported model version), but not with HF_HUB_OFFLINE=1 set:
then a local path fails as "HFValidationError: Repo id must be in the form 'repo_name' or 'namespace/repo_name'".

By hand against `make up` (gateway on 127.0.0.1:8080, its development key in .tritonstack/dev-api-key), from the
repository root after `make clients`:

    KEY=$(cat .tritonstack/dev-api-key)
    LD_LIBRARY_PATH=$(echo .venv-clients/lib/python3*/site-packages/nvidia/cuda_runtime/lib) \\
        .venv-clients/bin/perf_analyzer -m minilm -u 127.0.0.1:8080 -i http -H "Authorization: Bearer $KEY" \\
        --string-data "The quick brown fox jumps over the lazy dog." --concurrency-range 8
    # JSON tensors instead of binary: add --input-tensor-format json --output-tensor-format json
    .venv-clients/bin/aiperf profile -m smollm2 --endpoint-type chat --streaming -u http://127.0.0.1:8080 \\
        --api-key "$KEY" --tokenizer model_repository/smollm2/1 --prompt-output-tokens-mean 64 \\
        --request-count 8 --concurrency 4 --artifact-dir runs/aiperf-chat
    .venv-clients/bin/aiperf profile -m minilm --endpoint-type embeddings -u http://127.0.0.1:8080 \\
        --api-key "$KEY" --tokenizer model_repository/minilm/1 --request-count 64 --concurrency 8 \\
        --artifact-dir runs/aiperf-embeddings

(`model_repository/<model>/1`: any exported version directory; each holds the model's tokenizer.json. runs/ is
git-ignored.) AIPerf's own processes take CPU from the stack on a small machine: read its numbers as a client's
view, and measure throughput with perf_analyzer, wrk or Locust.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from loadtest import perf_analyzer
from tests.fixtures.exported import ExportedRepository
from tests.fixtures.gateway import GatewayKeys, RunningGateway, settings_for, start_gateway

if TYPE_CHECKING:
    from stack.redis import RedisServer
    from stack.triton import TritonServer

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = ROOT / ".venv-clients"
LOCAL_ROUTES = ROOT / "deploy" / "routes.local.yaml"  # the chat routes `make up` serves
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Triton serves the model behind an OpenAI-compatible gateway.",
    "Wie spät ist es in Berlin?",
    "A short one.",
    "Embeddings map sentences of any length to 384 numbers, normalised to unit length.",
]
PERF_REQUESTS = 20  # per run: a second or two of load at concurrency 2
AIPERF_REQUESTS = 4  # AIPerf is CPU-hungry (several processes); it is checked for compatibility, not throughput


def client_tool(name: str) -> Path:
    """The tool's executable in the clients' venv; skips (saying how to install it) when it is not there."""
    path = CLIENTS / "bin" / name
    if not path.exists():
        pytest.skip(f"{path.relative_to(ROOT)} is not installed: `make clients` installs NVIDIA's clients "
                    "(`make test` does it first)")
    return path


def perf_analyzer_env() -> dict[str, str]:
    """perf_analyzer loads libcudart.so.12 (no GPU used): the nvidia-cuda-runtime-cu12 wheel's copy."""
    return perf_analyzer.environment()


def run_perf_analyzer(gateway: RunningGateway, key: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """perf_analyzer on the gateway's /v2 over HTTP with the key, the sentence set as input data."""
    data = tmp_path / "sentences.json"
    data.write_text(json.dumps({"data": [{"text": [s]} for s in SENTENCES]}), encoding="utf-8")
    argv = [str(client_tool("perf_analyzer")), "-m", "minilm", "-u", gateway.address, "-i", "http",
            "-H", f"Authorization: Bearer {key}", "--input-data", str(data), "--concurrency-range", "2", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=perf_analyzer_env(), check=False)


@pytest.mark.parametrize("tensor_format", ["binary", "json"])
def test_perf_analyzer_through_the_gateway(gateway: RunningGateway, gateway_keys: GatewayKeys, tmp_path: Path,
                                           tensor_format: str) -> None:
    export = tmp_path / "profile.json"
    run = run_perf_analyzer(gateway, gateway_keys.user, tmp_path, "--request-count", str(PERF_REQUESTS),
                            "--input-tensor-format", tensor_format, "--output-tensor-format", tensor_format,
                            "--profile-export-file", str(export))
    assert run.returncode == 0, run.stdout + run.stderr
    (experiment,) = json.loads(export.read_text())["experiments"]
    assert experiment["experiment"] == {"mode": "concurrency", "value": 2}
    requests = experiment["requests"]
    assert len(requests) == PERF_REQUESTS
    for request in requests:  # every request answered: one response with both outputs decoded
        assert request["request_inputs"]["text"] in SENTENCES
        (outputs,) = request["response_outputs"]
        assert len(outputs["embedding"]) == 384 and outputs["token_count"] > 0


def test_perf_analyzer_shows_the_gateways_refusal(gateway: RunningGateway, tmp_path: Path) -> None:
    """A wrong key fails the run, and perf_analyzer prints the gateway's own message (KServe's error shape)."""
    wrong = "sk-not-a-key"
    refusal = httpx.get(f"{gateway.url}/v2/models/minilm", headers={"Authorization": f"Bearer {wrong}"}, timeout=10)
    assert refusal.status_code == 401
    message = refusal.json()["error"]
    assert isinstance(message, str) and message, refusal.text
    run = run_perf_analyzer(gateway, wrong, tmp_path, "--request-count", "2")
    assert run.returncode != 0
    assert message in run.stdout + run.stderr, run.stdout + run.stderr


@pytest.fixture(scope="module")
def chat_gateway(smollm2_triton: TritonServer, redis_server: RedisServer, gateway_keys: GatewayKeys
                 ) -> Iterator[RunningGateway]:
    """A gateway with `make up`'s chat routes (model smollm2 on the local Triton) on the session's SmolLM2 Triton."""
    gateway = start_gateway(settings_for(smollm2_triton, redis_server, gateway_keys, routes_file=LOCAL_ROUTES,
                                         requests_per_minute=100_000, tokens_per_minute=100_000_000))
    try:
        yield gateway
    finally:
        gateway.stop()


def run_aiperf(gateway: RunningGateway, key: str, tmp_path: Path, *args: str) -> dict[str, Any]:
    """AIPerf against the gateway, a few requests at concurrency 2; its JSON summary after a run that exited 0."""
    artifacts = tmp_path / "artifacts"
    argv = [str(client_tool("aiperf")), "profile", "-u", gateway.url, "--api-key", key,
            "--request-count", str(AIPERF_REQUESTS), "--concurrency", "2", "--random-seed", "7",
            "--output-artifact-dir", str(artifacts), "--ui-type", "none", "--no-auto-plot", "--no-server-metrics",
            "--no-gpu-telemetry", "--workers-max", "1", "--record-processors", "1", *args]
    # its own TMPDIR: AIPerf leaves directories there, and its ZMQ sockets' paths must stay under 108 characters
    with tempfile.TemporaryDirectory(prefix="aiperf-") as scratch:
        env = {**os.environ, "TMPDIR": scratch, "HF_HOME": str(tmp_path / "hf")}
        env.pop("HF_HUB_OFFLINE", None)  # with it set, AIPerf refuses a local tokenizer directory
        run = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, check=False)
    output = run.stdout[-4000:] + run.stderr[-4000:]
    assert run.returncode == 0, output
    export = artifacts / "profile_export_aiperf.json"
    assert export.exists(), f"AIPerf exited 0 without a summary (it does when its services fail to start): {output}"
    summary = json.loads(export.read_text())
    assert summary["request_count"]["avg"] == AIPERF_REQUESTS
    assert summary["error_summary"] == [] and "error_request_count" not in summary, summary["error_summary"]
    assert not summary["was_cancelled"]
    return summary


def version_dir(export: ExportedRepository, model: str) -> Path:
    """The exported version's directory (its tokenizer.json is AIPerf's tokenizer)."""
    path = export.repository / model / str(export.result.version)
    assert (path / "tokenizer.json").exists()
    return path


@pytest.mark.slow
def test_aiperf_streams_chat_completions(chat_gateway: RunningGateway, gateway_keys: GatewayKeys,
                                         smollm2_export: ExportedRepository, tmp_path: Path) -> None:
    summary = run_aiperf(chat_gateway, gateway_keys.user, tmp_path, "-m", "smollm2", "--endpoint-type", "chat",
                         "--streaming", "--tokenizer", str(version_dir(smollm2_export, "smollm2")),
                         "--prompt-input-tokens-mean", "16", "--prompt-input-tokens-stddev", "0",
                         "--prompt-output-tokens-mean", "8", "--prompt-output-tokens-stddev", "0",
                         "--extra-inputs", "min_tokens:8")  # exactly 8 tokens: max_completion_tokens and min_tokens
    assert summary["time_to_first_token"]["count"] == AIPERF_REQUESTS  # measured on the SSE stream
    assert summary["output_sequence_length"]["min"] == summary["output_sequence_length"]["max"] == 8
    assert summary["usage_completion_tokens"]["avg"] == 8  # the stream's usage chunk (include_usage), read by AIPerf


def test_aiperf_embeddings(gateway: RunningGateway, gateway_keys: GatewayKeys, minilm_export: ExportedRepository,
                           tmp_path: Path) -> None:
    summary = run_aiperf(gateway, gateway_keys.user, tmp_path, "-m", "minilm", "--endpoint-type", "embeddings",
                         "--tokenizer", str(version_dir(minilm_export, "minilm")),
                         "--prompt-input-tokens-mean", "16", "--prompt-input-tokens-stddev", "0")
    assert summary["input_sequence_length"]["min"] > 0
    assert summary["request_latency"]["count"] == AIPERF_REQUESTS
