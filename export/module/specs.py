"""The config an `export torch` writes: any ONNX model, on ONNX Runtime.

- CPU (pip-installed Triton, python backend only): a python model running the graph on ONNX Runtime.
- GPU (official Triton image): `onnxruntime_onnx` with the TensorRT accelerator.

Inputs and outputs are the graph's (`export.onnx_io`); the config is validated against Triton's schema.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from export.config import ModelSpec, Tensor, WarmupSample, render_spec
from export.repository import ModelFiles
from export.serving import SUPPORT, TRITON_PYTHON, ServingOptions, tensor_warmup


def _generic_warmup(inputs: Sequence[Tensor], opts: ServingOptions) -> tuple[list[WarmupSample], dict[str, bytes]]:
    if not opts.warmup:
        return [], {}
    dims = {t.name: tuple(d if d > 0 else 1 for d in t.dims) for t in inputs}
    data = {t.name: tensor_warmup(t.data_type, dims[t.name]) for t in inputs}
    return [WarmupSample("zeros", 1, {t.name: t.name for t in inputs}, dims=dims)], data


def generic_onnx(
    name: str,
    onnx_file: Path,
    inputs: Sequence[Tensor],
    outputs: Sequence[Tensor],
    opts: ServingOptions,
    *,
    target: str,
    precision: str = "fp32",
) -> ModelFiles:
    """Any ONNX model: python backend + ONNX Runtime for `cpu`, `onnxruntime_onnx` (+ TensorRT) for `gpu`."""
    samples, warmup = _generic_warmup(inputs, opts)
    common = {
        "name": name,
        "max_batch_size": opts.max_batch_size,
        "inputs": list(inputs),
        "outputs": list(outputs),
        "batching": opts.batching(),
        "instance_count": opts.instances,
        "version_policy": opts.version_policy,
        "warmup": samples,
    }
    if target == "cpu":
        spec = ModelSpec(
            backend="python",
            instance_kind="KIND_CPU",
            parameters={
                "onnx_file": "model.onnx",
                **opts.onnx_runtime_parameters(),
                "precision": precision,
            },
            **common,
        )
        files = {"model.py": TRITON_PYTHON / "onnx_runtime.py", **SUPPORT, "model.onnx": onnx_file}
    else:
        spec = ModelSpec(
            platform="onnxruntime_onnx",
            instance_kind="KIND_GPU",
            tensorrt_accelerator_precision="FP16" if precision == "fp16" else "FP32",
            parameters={"precision": precision},
            **common,
        )
        files = {"model.onnx": onnx_file}
    return ModelFiles(name=name, config_text=render_spec(spec), files=files, warmup=warmup)
