"""Read an ONNX model's inputs and outputs as Triton tensor specs (config generation from the graph).

ONNX Runtime's view of the graph is used rather than the raw graph declarations: it has run shape
inference, so an output declared with a symbolic dimension (e.g. after `normalize`) reports its size.
"""

from __future__ import annotations

from pathlib import Path

from export.config import Tensor
from export.errors import ModelSourceError

# ONNX Runtime type strings → Triton data types
ORT_TO_TRITON = {
    "tensor(float)": "TYPE_FP32",
    "tensor(float16)": "TYPE_FP16",
    "tensor(double)": "TYPE_FP64",
    "tensor(bfloat16)": "TYPE_BF16",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32",
    "tensor(uint64)": "TYPE_UINT64",
    "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(bool)": "TYPE_BOOL",
    "tensor(string)": "TYPE_STRING",
}


def _tensor(arg, batched: bool) -> Tensor:
    if arg.type not in ORT_TO_TRITON:
        raise ModelSourceError(f"tensor {arg.name!r} has type {arg.type}, which Triton cannot serve")
    dims = [d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape]
    if batched:
        if not dims:
            raise ModelSourceError(f"tensor {arg.name!r} is a scalar: it has no batch axis to batch on")
        dims = dims[1:]
    return Tensor(arg.name, ORT_TO_TRITON[arg.type], tuple(dims))


def graph_tensors(onnx_path: Path, *, batched: bool = True) -> tuple[list[Tensor], list[Tensor]]:
    """(inputs, outputs) of the model; with `batched`, axis 0 is the batch axis and is left out of dims."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    inputs = [_tensor(arg, batched) for arg in session.get_inputs()]
    outputs = [_tensor(arg, batched) for arg in session.get_outputs()]
    return inputs, outputs
