"""The GPU generation target on a real GPU: skipped unless onnxruntime-gpu (CUDA provider) and CuPy are installed.

On a GPU machine: `pip install onnxruntime-gpu cupy-cuda12x` into the venv (replacing onnxruntime), then
`pytest tests/test_llm_gpu.py`. The CPU-side pieces of the same path (fp16 graph, unpadded prefill) are tested
everywhere in test_llm_serving.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.llm.pipeline import Smollm2Request, export_smollm2
from triton_models.llm_engine import Place

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(Place("cuda", 0).missing() is not None,
                       reason="needs a GPU with onnxruntime-gpu and CuPy (the GPU target's runtime)"),
]


@pytest.fixture(scope="module")
def gpu_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    repository = tmp_path_factory.mktemp("gpu-llm") / "model_repository"
    (report,) = export_smollm2(Smollm2Request(repository=repository, target="gpu")).reports
    return repository / "smollm2" / "1", report


def test_parity_runs_on_cuda_and_passes(gpu_export) -> None:
    _, report = gpu_export
    assert report.passed and report.label.endswith("CUDA"), report.describe()


def test_the_cache_lives_on_the_gpu_and_decoding_matches_the_cpu_run_of_the_same_graph(gpu_export) -> None:
    import cupy

    from export.llm.parity import greedy_generate
    from triton_models.llm_engine import HOST, Decoder, ModelInfo

    version, _ = gpu_export
    info = ModelInfo.load(version / "generation.json")
    gpu = Decoder(version / "model.onnx", info, place=Place("cuda", 0))
    cpu = Decoder(version / "model.onnx", info, place=HOST)
    prompt = list(range(100, 160))
    _, slots = gpu.prefill(prompt)
    assert isinstance(slots.cache[0], cupy.ndarray) and slots.cache[0].dtype == np.float16
    on_gpu, gpu_logits = greedy_generate(gpu, prompt, 16)
    on_cpu, cpu_logits = greedy_generate(cpu, prompt, 16)
    assert on_gpu == on_cpu
    assert max(float(np.abs(a - b).max()) for a, b in zip(gpu_logits, cpu_logits, strict=False)) < 0.25
