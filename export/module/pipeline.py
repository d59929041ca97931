"""The pipeline behind `tritonstack export torch`: any `torch.nn.Module` → ONNX → tensor parity → new version.

Same contract as the other pipelines (`export.steps`): options are validated and the version resolved before the
module is built, artifacts are built in a temporary directory, and the repository is written only after the parity
gate passed.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from export import steps
from export.errors import OptionError
from export.module.specs import generic_onnx
from export.serving import ServingOptions, validate_serving
from export.steps import ExportResult, Quiet, Reporter, timed

COMMAND = "tritonstack export torch"


@dataclass(frozen=True)
class TorchRequest:
    """`tritonstack export torch` options."""

    factory: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    name: str
    repository: Path = Path("model_repository")
    target: str = "cpu"
    precision: str = "fp32"
    serving: ServingOptions = field(default_factory=ServingOptions)
    atol: float = 1e-4
    version: int | None = None
    force: bool = False
    if_missing: bool = False


def validate_torch(req: TorchRequest) -> None:
    """All checks that need no model."""
    if req.precision not in ("fp32", "fp16"):
        raise OptionError("--precision for `export torch` is fp32 or fp16 (fp16 with --target gpu)")
    steps.validate_target(req.target, req.precision, "onnx")
    validate_serving(req.serving)
    if not req.inputs or not req.outputs:
        raise OptionError("give at least one --input NAME:DTYPE:SHAPE and one --output NAME")
    if req.atol <= 0:
        raise OptionError("--atol must be > 0")


def export_torch(req: TorchRequest, reporter: Reporter | None = None) -> ExportResult:
    """Export a `module:factory` torch module as asked; raises ExportError (nothing written) on failure."""
    from export import onnx_io
    from export.module import loader

    reporter = reporter or Quiet()
    validate_torch(req)
    input_specs = [loader.InputSpec.parse(text) for text in req.inputs]
    result = steps.start(req.repository, req.name, version=req.version, force=req.force,
                         if_missing=req.if_missing, command=COMMAND)
    if result.skipped_reason:
        return result
    with timed(reporter, result, f"build {req.factory}"):
        module = loader.load_module(req.factory)
    with tempfile.TemporaryDirectory(prefix=steps.TEMP_PREFIX) as work:
        onnx_path = Path(work) / "model.onnx"
        with timed(reporter, result, "export ONNX (torch.onnx, opset 17)"):
            loader.export_onnx(module, input_specs, req.outputs, onnx_path)
        with timed(reporter, result, "parity: ONNX vs PyTorch on random inputs"):
            report = loader.check_parity(
                module, onnx_path, input_specs, req.outputs, atol=req.atol, max_batch_size=req.serving.max_batch_size
            )
        steps.check(result, report, reporter)
        inputs, outputs = onnx_io.graph_tensors(onnx_path)
        files = generic_onnx(
            req.name, onnx_path, inputs, outputs, req.serving, target=req.target, precision=req.precision
        )
        steps.write(req.repository, [files], result, reporter, force=req.force)
    return result
