"""ONNX Runtime for the generation model: the sessions of its decoder graphs, and the checks that refuse a runtime
or provider that cannot run them (with what to install), before a cryptic error from inside ONNX Runtime.

Used by `llm_engine.Decoder`; copied next to it into the version directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnxruntime as ort

MIN_ORT = (1, 32)  # the CPU graph: GroupQueryAttention's `query_seqlens` input (right-padded rows) is new in 1.32
# The GPU graph (fp16, no `query_seqlens`) needs no 1.32 feature. It is checked on ONNX Runtime 1.24 (the CPU provider
# of 1.24.4 loads and runs it, batched prefill included: docs/LLM.md, "GPU target"), the GPU image's pin: a CUDA 12
# build of onnxruntime-gpu (up to 1.26 on PyPI; 1.27 on are CUDA 13 builds), as NVIDIA's Triton 24.12 has CUDA 12.6.
MIN_ORT_GPU = (1, 24)


def check_runtime(version: str = ort.__version__, *, gpu_graph: bool = False) -> None:
    """Refuse an ONNX Runtime that cannot load the exported graph, with what to install (instead of its INVALID_GRAPH
    error about GroupQueryAttention's input count)."""
    found = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    if gpu_graph and found < MIN_ORT_GPU:
        raise RuntimeError(
            f"the GPU generation graph (tritonstack export smollm2 --target gpu) is checked on onnxruntime-gpu >= "
            f"{'.'.join(map(str, MIN_ORT_GPU))}; this Python has onnxruntime {version}: install the GPU image's pin "
            "(deploy/docker/requirements-triton-gpu.txt: onnxruntime-gpu 1.24.4, a CUDA 12 build)"
        )
    if not gpu_graph and found < MIN_ORT:
        raise RuntimeError(
            f"the generation graph needs onnxruntime >= {'.'.join(map(str, MIN_ORT))} (GroupQueryAttention's "
            f"query_seqlens input); this Python has onnxruntime {version}: pip install 'onnxruntime>=1.32' "
            "(wheels for Python >= 3.11). A `--target cpu` export does not load on the GPU image's onnxruntime-gpu "
            "(no CUDA 12 build of 1.32): serve it with LLM_RUNTIME=cpu, or export with --target gpu"
        )


def check_provider(session: Any, place: Any) -> None:
    """Refuse a GPU session that ONNX Runtime quietly created on the CPU. `get_available_providers()` lists the
    providers built in, not those that load: when the CUDA provider's libraries (CUDA, cuDNN) do not load, ONNX
    Runtime logs the error and falls back to the CPU provider. `place`: a `llm_engine.Place`."""
    if place.device == "cpu":
        return
    used = list(session.get_providers())
    if not used or used[0] != "CUDAExecutionProvider":
        raise RuntimeError(
            f"execution_provider cuda: ONNX Runtime {ort.__version__} created the session with {used}, not "
            "CUDAExecutionProvider first: its CUDA provider did not load (the log above names the library that "
            "failed). onnxruntime-gpu must be a build for the CUDA major version of this machine (1.24.x: CUDA 12 "
            "and cuDNN 9, as NVIDIA's Triton 24.12 image has; 1.27 on: CUDA 13) and the driver must support it. "
            "Refusing to run the fp16 GPU graph on the CPU"
        )


def session(onnx_path: Path, intra_op_threads: int, inter_op_threads: int, allow_spinning: bool,
            place: Any) -> ort.InferenceSession:
    """A session of `onnx_path` on `place` (a `llm_engine.Place`: the CPU, or a GPU by CUDA's provider)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(onnx_path), options, providers=_providers(place))


def _providers(place: Any) -> list:
    if place.device == "cpu":
        return ["CPUExecutionProvider"]
    return [("CUDAExecutionProvider", {"device_id": place.device_id}), "CPUExecutionProvider"]
