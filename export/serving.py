"""The serving knobs of the batched exports (`export minilm`, `export torch`) and what every config they write shares.

`ServingOptions` is what the serving flags of those commands turn into: dynamic batching, instances, queue, version
policy, warmup, ONNX Runtime threads. The generation model (`export.llm.specs.GenerationServing`) batches inside
its python model instead and has knobs of its own.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.config import NUMPY_TO_TRITON, Batching
from export.errors import OptionError
from export.steps import validate_version_policy

TRITON_PYTHON = Path(__file__).resolve().parents[1] / "triton_models"  # python-backend models an export copies
SUPPORT = {"model_support.py": TRITON_PYTHON / "model_support.py"}  # imported by each model.py
TEXT_SUPPORT = {**SUPPORT, "text_inputs.py": TRITON_PYTHON / "text_inputs.py"}  # the tokenizer step's helpers too
TRITON_TO_NUMPY = {v: k for k, v in NUMPY_TO_TRITON.items() if k not in ("bytes", "object")}


@dataclass(frozen=True)
class ServingOptions:
    """The config knobs every batched export exposes as flags."""

    max_batch_size: int = 64
    dynamic_batching: bool = True
    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    # 0 = no default_queue_policy: on the bundled Triton 2.51 a queue policy makes the dynamic batcher stall between
    # batches under load, and the gateway's in-flight bound sheds load instead. Opt in with --max-queue-size N
    # (docs/EXPORT.md, config flags).
    max_queue_size: int = 0
    instances: int = 1
    version_policy: str = "latest:1"
    warmup: bool = True
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    ort_spinning: bool = False

    def batching(self) -> Batching:
        """The config's `dynamic_batching`."""
        return Batching(
            enabled=self.dynamic_batching,
            max_queue_delay_us=self.max_queue_delay_us,
            preferred_batch_sizes=self.preferred_batch_sizes,
            max_queue_size=self.max_queue_size,
        )

    def onnx_runtime_parameters(self) -> dict[str, str]:
        """The `parameters` a python-backend model reads to configure its ONNX Runtime session."""
        return {
            "intra_op_num_threads": str(self.intra_op_threads),
            "inter_op_num_threads": str(self.inter_op_threads),
            "allow_spinning": "1" if self.ort_spinning else "0",
        }


def validate_serving(opts: ServingOptions) -> None:
    """Reject inconsistent config knobs before any slow work."""
    validate_version_policy(opts.version_policy)
    if opts.max_batch_size < 1 or opts.instances < 1:
        raise OptionError("--max-batch-size and --instances must be >= 1")
    if any(p < 1 or p > opts.max_batch_size for p in opts.preferred_batch_sizes):
        raise OptionError(f"--preferred-batch-size values must be within 1..--max-batch-size ({opts.max_batch_size})")
    if opts.max_queue_delay_us < 0 or opts.max_queue_size < 0:
        raise OptionError("--max-queue-delay-us and --max-queue-size must be >= 0")


def string_warmup(texts: Sequence[str]) -> bytes:
    """TYPE_STRING warmup data: each element as a 4-byte little-endian length + UTF-8 bytes."""
    return b"".join(struct.pack("<I", len(t.encode("utf-8"))) + t.encode("utf-8") for t in texts)


def tensor_warmup(data_type: str, dims: Sequence[int], fill: float = 0) -> bytes:
    """Row-major warmup data for one batch item of a numeric input."""
    return np.full(tuple(dims), fill, dtype=TRITON_TO_NUMPY[data_type]).tobytes()
