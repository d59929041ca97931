"""Export any `torch.nn.Module` built by a `module:factory` to ONNX and check it against PyTorch.

Inputs are declared as `NAME:DTYPE:SHAPE`, e.g. `x:float32:-1x16`: axis 0 must be -1 (the batch axis);
any other -1 is a dynamic axis too. Parity runs the module and the ONNX graph (ONNX Runtime, CPU) on
random inputs at several batch sizes and dynamic-axis lengths and gates on the max absolute difference.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.errors import ModelSourceError, OptionError
from export.parity import TensorParity

DTYPES = ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
OPSET = 17
# (batch size, length of every other dynamic axis) per parity trial
TRIALS = ((1, 1), (3, 5), (8, 2))
INT_HIGH = 8  # random integer inputs are drawn from [0, INT_HIGH): valid indices for small embeddings


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, numpy dtype name, shape with -1 for dynamic axes (axis 0 = batch)."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> InputSpec:
        """`NAME:DTYPE:SHAPE`, SHAPE like `-1x16` (`x`-separated; -1 = dynamic; first axis = batch)."""
        parts = text.split(":")
        if len(parts) != 3 or not parts[0]:
            raise OptionError(f"--input {text!r}: expected NAME:DTYPE:SHAPE, e.g. x:float32:-1x16")
        name, dtype, shape_text = parts
        if dtype not in DTYPES:
            raise OptionError(f"--input {text!r}: dtype must be one of {', '.join(DTYPES)}")
        try:
            shape = tuple(int(d) for d in shape_text.split("x"))
        except ValueError as exc:
            raise OptionError(f"--input {text!r}: SHAPE must be integers joined by 'x', e.g. -1x16") from exc
        if shape[0] != -1 or any(d == 0 or d < -1 for d in shape):
            raise OptionError(f"--input {text!r}: the first axis must be -1 (batch); others -1 or positive")
        return cls(name, dtype, shape)

    def concrete(self, batch: int, dynamic: int) -> tuple[int, ...]:
        return (batch, *(dynamic if d == -1 else d for d in self.shape[1:]))


def load_module(target: str):  # -> torch.nn.Module
    """Import `module:factory` (the current directory is importable) and build the module in eval mode."""
    import torch

    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise OptionError(f"{target!r}: expected MODULE:FACTORY, e.g. mypkg.models:make_model")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelSourceError(f"cannot load {target!r}: {exc} (is the module on PYTHONPATH?)") from exc
    built = factory()
    if not isinstance(built, torch.nn.Module):
        raise ModelSourceError(f"{target!r} returned {type(built).__name__}, not a torch.nn.Module")
    return built.eval()


def random_inputs(specs: Sequence[InputSpec], batch: int, dynamic: int, seed: int) -> list[np.ndarray]:
    """Deterministic random arrays for `specs` (floats ~ N(0,1), integers in [0, INT_HIGH), bools)."""
    rng = np.random.default_rng(seed)
    arrays = []
    for spec in specs:
        shape = spec.concrete(batch, dynamic)
        if spec.dtype.startswith("float"):
            arrays.append(rng.standard_normal(shape).astype(spec.dtype))
        elif spec.dtype == "bool":
            arrays.append(rng.integers(0, 2, shape).astype(bool))
        else:
            arrays.append(rng.integers(0, INT_HIGH, shape).astype(spec.dtype))
    return arrays


# what a module's forward pass raises for inputs it cannot take (torch: RuntimeError for dtype and shape
# mismatches, IndexError for embedding ids, TypeError for a wrong input count; asserts in user code)
_INPUT_ERRORS = (RuntimeError, TypeError, ValueError, IndexError, AssertionError)


def _declared(specs: Sequence[InputSpec], arrays: Sequence[np.ndarray]) -> str:
    """`--input x:float32:-1x16 (run as float32 2x16)` for each input, comma-separated."""
    return ", ".join(
        f"--input {s.name}:{s.dtype}:{'x'.join(map(str, s.shape))} (run as {a.dtype} {'x'.join(map(str, a.shape))})"
        for s, a in zip(specs, arrays, strict=True)
    )


def _torch_outputs(module, specs: Sequence[InputSpec], arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The module's outputs on `arrays`; OptionError naming the declared inputs when it rejects them."""
    import torch

    try:
        with torch.no_grad():
            result = module(*(torch.from_numpy(a) for a in arrays))
    except _INPUT_ERRORS as exc:
        complaint = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise OptionError(
            f"the module rejected {_declared(specs, arrays)}: {complaint}; "
            "declare each input with the dtype and shape its forward() expects"
        ) from None
    results = result if isinstance(result, tuple | list) else (result,)
    return [r.detach().cpu().numpy() for r in results]


def _dynamic_axes(specs: Sequence[InputSpec], outputs: Sequence[str]) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for spec in specs:
        axes[spec.name] = {i: ("batch" if i == 0 else f"{spec.name}_{i}") for i, d in enumerate(spec.shape) if d == -1}
    for name in outputs:
        axes[name] = {0: "batch"}
    return axes


def export_onnx(module, specs: Sequence[InputSpec], outputs: Sequence[str], destination: Path) -> Path:
    """Trace `module` on example inputs and export it with dynamic batch (and other -1) axes."""
    import torch

    example = random_inputs(specs, batch=2, dynamic=3, seed=0)
    produced = len(_torch_outputs(module, specs, example))
    if produced != len(outputs):
        raise OptionError(f"the module returns {produced} tensor(s) but {len(outputs)} --output name(s) were given")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(torch.from_numpy(a) for a in example),
            str(destination),
            input_names=[s.name for s in specs],
            output_names=list(outputs),
            dynamic_axes=_dynamic_axes(specs, outputs),
            opset_version=OPSET,
            dynamo=False,
        )
    return destination


def ort_runner(onnx_path: Path) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
    """`run(feeds) -> outputs` on an ONNX Runtime CPU session."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(None, feeds)


def check_parity(
    module,
    onnx_path: Path,
    specs: Sequence[InputSpec],
    outputs: Sequence[str],
    *,
    atol: float,
    max_batch_size: int,
) -> TensorParity:
    """Max abs difference between PyTorch and ONNX Runtime over TRIALS random batches."""
    run = ort_runner(onnx_path)
    worst = dict.fromkeys(outputs, 0.0)
    for seed, (batch, dynamic) in enumerate(TRIALS, start=1):
        arrays = random_inputs(specs, min(batch, max_batch_size), dynamic, seed)
        expected = _torch_outputs(module, specs, arrays)
        actual = run({s.name: a for s, a in zip(specs, arrays, strict=True)})
        for name, e, a in zip(outputs, expected, actual, strict=True):
            if e.shape != a.shape:
                raise OptionError(f"output {name!r}: ONNX shape {a.shape} differs from PyTorch {e.shape}")
            diff = float(np.abs(e.astype(np.float64) - a.astype(np.float64)).max()) if e.size else 0.0
            worst[name] = max(worst[name], diff if np.isfinite(diff) else float("inf"))
    return TensorParity(
        label="ONNX (ONNX Runtime CPU) vs PyTorch",
        trials=len(TRIALS),
        max_abs_diff=max(worst.values()),
        per_output=worst,
        atol=atol,
    )
