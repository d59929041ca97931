"""Reduced-precision variants of an exported ONNX model.

- int8: ONNX Runtime dynamic quantisation, per-channel QInt8 weights (activations quantised at run time):
  per-channel scales keep MiniLM closer to fp32 than per-tensor ones, and int8 runs faster than fp32 on CPU
  (parity in docs/EXPORT.md, throughput in docs/BENCHMARKS.md, `bench:triton`).
- fp16: weights and compute in float16 with float32 inputs/outputs kept (`keep_io_types`), for
  strongly typed TensorRT builds (TensorRT ≥ 11 removed the FP16 builder flag).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def _quiet_root_warnings() -> Iterator[None]:
    """ONNX Runtime's quantizer warns on the root logger to run its pre-processing; ours is the plain recipe."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def quantize_int8(source: Path, destination: Path) -> Path:
    """Dynamic int8 quantisation (per-channel, QInt8 weights) of `source` into `destination`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_root_warnings():
        quantize_dynamic(
            model_input=str(source),
            model_output=str(destination),
            per_channel=True,
            weight_type=QuantType.QInt8,
        )
    return destination


def convert_fp16(source: Path, destination: Path) -> Path:
    """Float16 copy of `source` with float32 graph inputs and outputs."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(destination))
    return destination
